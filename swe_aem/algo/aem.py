"""Adaptive Entropy Modulation (AEM): entropy-aware rescaling of advantages.

For a softmax policy over whole responses, a step moves the response-level
entropy by  dH = eta * E[A * (S - H)]  (S = surprisal of the response): a
confident response (low S) with A < 0 pushes entropy up, with A > 0 pushes it
down. AEM amplifies confident responses and damps uncertain ones, using each
response's mean token entropy as a low-noise proxy for S:

    Htil  = min-max normalised proxy inside the group   (0 if all equal)
    alpha = exp(-lam * Htil) / group-mean(exp(-lam * Htil))
    Ahat  = alpha * A

alpha is detached, mean 1 per group, so while negatives dominate the update
raises entropy (exploration) and once positives dominate it lowers it
(exploitation). lam = 0 is the base estimator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from swe_aem.algo.groups import dense_groups, group_count, group_reduce, group_sum

AEMLevel = Literal["turn", "trajectory"]


def aem_weights(response_entropy: Tensor, group_index: Tensor, lam: float) -> Tensor:
    """Per-response alpha: min-max normalise inside each group, exp(-lam * .), mean 1."""
    h = response_entropy.detach().double()
    if h.shape != group_index.shape:
        raise ValueError(f"entropy {tuple(h.shape)} and groups {tuple(group_index.shape)} disagree")
    if not torch.isfinite(h).all():
        raise ValueError("response entropies must be finite")
    inv, g = dense_groups(group_index)
    lo = group_reduce(h, inv, g, "amin")[inv]
    span = group_reduce(h, inv, g, "amax")[inv] - lo
    h_norm = torch.where(span > 0, (h - lo) / torch.where(span > 0, span, 1.0), 0.0)
    e = torch.exp(-lam * h_norm)
    group_mean = group_sum(e, inv, g) / group_count(inv, g, e.dtype)
    return (e / group_mean[inv]).to(response_entropy.dtype if response_entropy.is_floating_point()
                                     else torch.float32)


@dataclass(frozen=True)
class AEMResult:
    turn_advantages: Tensor  # [R] advantage of each response (turn), after AEM
    alpha: Tensor            # [R] per-turn weight (turn level) or the trajectory's weight


def apply_aem(
    traj_advantages: Tensor,
    traj_group: Tensor,
    turn_entropy: Tensor,
    turn_traj: Tensor,
    lam: float,
    level: AEMLevel = "turn",
    turn_lengths: Tensor | None = None,
) -> AEMResult:
    """Rescale trajectory advantages into per-turn advantages.

    traj_advantages, traj_group: [N] one per trajectory (group = task).
    turn_entropy: [R] mean token entropy of each assistant turn; turn_traj: [R]
    index of its trajectory. Turn level pools every turn of a group's
    trajectories; trajectory level uses one proxy per trajectory (the token-
    weighted mean when `turn_lengths` is given) and broadcasts its alpha.
    """
    if turn_entropy.shape != turn_traj.shape:
        raise ValueError("turn_entropy and turn_traj must have the same shape")
    base = traj_advantages[turn_traj]
    turn_entropy = turn_entropy.detach()
    if level == "turn":
        alpha = aem_weights(turn_entropy, traj_group[turn_traj], lam)
    elif level == "trajectory":
        n = traj_advantages.shape[0]
        h = turn_entropy.double()
        w = turn_lengths.double() if turn_lengths is not None else torch.ones_like(h)
        num = torch.zeros(n, dtype=h.dtype).index_add_(0, turn_traj, h * w)
        den = torch.zeros(n, dtype=h.dtype).index_add_(0, turn_traj, w)
        has_turns = den > 0
        traj_alpha = torch.ones(n, dtype=h.dtype)
        traj_alpha[has_turns] = aem_weights(num[has_turns] / den[has_turns],
                                            traj_group[has_turns], lam)
        alpha = traj_alpha[turn_traj]
    else:
        raise ValueError(f"unknown AEM level {level!r}; use 'turn' or 'trajectory'")
    alpha = alpha.detach().to(base.dtype)
    return AEMResult(turn_advantages=alpha * base, alpha=alpha)
