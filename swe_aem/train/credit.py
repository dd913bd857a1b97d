"""Credit assignment: rewards -> trajectory advantages -> per-turn advantages (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from swe_aem.agent.trajectory import Episode
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


def credit_rows(episodes: Sequence[Episode], samples: Sequence[Sample], layout: TurnLayout,
                turn_entropy: Tensor, turn_lengths: Tensor, credit: Credit) -> list[dict[str, Any]]:
    """One row per assistant turn of a step: what the credit assignment gave it.

    The record a run viewer shows turn by turn (`credit/step-N.jsonl`, written by rank 0):
    the episode (task, sample), the turn, its sampled tokens and mean token entropy (AEM's
    proxy), AEM's alpha, the advantage before AEM (the estimator's, broadcast to the turn)
    and after, and whether the trajectory is masked out of the loss (compact filtering: it
    stays in the group's baseline). `episodes[i]` is the episode of `samples[i]`
    (`samples_from_episodes` keeps the order). Pure: tensors in, plain rows out.
    """
    if len(episodes) != len(samples):
        raise ValueError(f"{len(episodes)} episodes for {len(samples)} samples")
    n = layout.num_turns
    for name, t in (("turn_entropy", turn_entropy), ("turn_lengths", turn_lengths),
                    ("turn_advantages", credit.turn_advantages), ("alpha", credit.alpha)):
        if t.numel() != n:
            raise ValueError(f"{name} has {t.numel()} entries for the batch's {n} turns")
    sample_of = layout.turn_sample.tolist()
    entropy, lengths = turn_entropy.tolist(), turn_lengths.tolist()
    alpha, after = credit.alpha.tolist(), credit.turn_advantages.tolist()
    before = credit.traj_advantages[layout.turn_sample].tolist() if n else []
    rows = []
    for r in range(n):
        i = sample_of[r]
        ep, s = episodes[i], samples[i]
        rows.append({"task": ep.instance_id, "sample": ep.sample_index, "turn": r - layout.offsets[i],
                     "group": s.group, "reward": s.reward, "tokens": int(lengths[r]),
                     "entropy": entropy[r], "alpha": alpha[r], "advantage": before[r],
                     "advantage_aem": after[r], "masked": not s.trainable})
    return rows
