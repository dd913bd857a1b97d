"""Credit assignment: rewards -> trajectory advantages -> per-turn advantages (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from swe_aem.algo.advantages import get_advantage_estimator
from swe_aem.algo.aem import apply_aem
from swe_aem.algo.diagnostics import aem_group_diagnostics, summarize
from swe_aem.config import AlgoConfig
from swe_aem.train.batch import Sample, TurnLayout


@dataclass(frozen=True)
class Credit:
    traj_advantages: Tensor  # [N] from the estimator
    turn_advantages: Tensor  # [R] after AEM (equal to the broadcast base when AEM is off)
    alpha: Tensor  # [R]
    diagnostics: dict[str, float]


def assign_credit(
    samples: list[Sample],
    layout: TurnLayout,
    turn_entropy: Tensor,
    turn_lengths: Tensor,
    turn_surprisal: Tensor,
    cfg: AlgoConfig,
) -> Credit:
    """Estimator advantages per trajectory, then AEM over the turns of each group."""
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32)
    groups = torch.tensor([s.group for s in samples], dtype=torch.long)
    traj_adv = get_advantage_estimator(cfg.advantage)(rewards, groups)
    base = traj_adv[layout.turn_sample]
    if cfg.aem:
        trainable = torch.tensor([s.trainable for s in samples], dtype=torch.bool)
        res = apply_aem(traj_adv, groups, turn_entropy, layout.turn_sample, cfg.aem_lambda,
                        level=cfg.aem_level, turn_lengths=turn_lengths,
                        min_range=cfg.aem_min_range, trainable=trainable)
        turn_adv, alpha = res.turn_advantages, res.alpha
    else:
        turn_adv, alpha = base, torch.ones_like(base)
    diag: dict[str, float] = {}
    if layout.num_turns:
        diag = summarize(aem_group_diagnostics(base, turn_adv, alpha, turn_surprisal, layout.turn_group))
        diag["alpha_std"] = float(alpha.std()) if alpha.numel() > 1 else 0.0
    return Credit(traj_adv, turn_adv, alpha, diag)
