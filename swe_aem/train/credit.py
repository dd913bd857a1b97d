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
                turn_entropy: Tensor, turn_lengths: Tensor, credit: Credit,
                token_entropy: Sequence[Tensor] | None = None) -> list[dict[str, Any]]:
    """One row per assistant turn of a step: what the credit assignment gave it.

    The record a run viewer shows turn by turn (`credit/step-N.jsonl`, written by rank 0):
    the episode (task, sample), the turn, its sampled tokens and mean token entropy (AEM's
    proxy), AEM's alpha, the advantage before AEM (the estimator's, broadcast to the turn)
    and after, and whether the trajectory is masked out of the loss (compact filtering: it
    stays in the group's baseline). `episodes[i]` is the episode of `samples[i]`
    (`samples_from_episodes` keeps the order). With `token_entropy` (ForwardStats's, per
    sample: its sampled tokens' entropies in position order) each row also lists its turn's
    (`token_entropy`, rounded to TOKEN_ENTROPY_DECIMALS); without, rows have no such key.
    Pure: tensors in, plain rows out.
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
    per_turn = _token_entropy_per_turn(samples, token_entropy) if token_entropy is not None else None
    rows = []
    for r in range(n):
        i = sample_of[r]
        ep, s = episodes[i], samples[i]
        row = {"task": ep.instance_id, "sample": ep.sample_index, "turn": r - layout.offsets[i],
               "group": s.group, "reward": s.reward, "tokens": int(lengths[r]),
               "entropy": entropy[r], "alpha": alpha[r], "advantage": before[r],
               "advantage_aem": after[r], "masked": not s.trainable}
        if per_turn is not None:
            row["token_entropy"] = per_turn[i].get(r - layout.offsets[i], [])
        rows.append(row)
    return rows


TOKEN_ENTROPY_DECIMALS = 4  # a credit row's token entropies: 4 decimals keep the file small


def _token_entropy_per_turn(samples: Sequence[Sample], token_entropy: Sequence[Tensor]
                            ) -> list[dict[int, list[float]]]:
    """Each sample's sampled-token entropies split by turn (the turn of each sampled token is
    the sample's turn index shifted by one, as the forward's targets are), rounded."""
    if len(token_entropy) != len(samples):
        raise ValueError(f"token_entropy has {len(token_entropy)} samples for the batch's {len(samples)}")
    out = []
    for i, (s, ent) in enumerate(zip(samples, token_entropy)):
        turns = [t for t in s.turn_index[1:] if t >= 0]
        if len(turns) != ent.numel():
            raise ValueError(f"sample {i}: {ent.numel()} token entropies for its {len(turns)} sampled tokens")
        per: dict[int, list[float]] = {}
        for t, h in zip(turns, ent.tolist()):
            per.setdefault(t, []).append(round(h, TOKEN_ENTROPY_DECIMALS))
        out.append(per)
    return out
