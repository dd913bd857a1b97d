"""Adaptive Entropy Modulation (AEM): entropy-aware rescaling of advantages.

For a softmax policy over whole responses, a step moves the response-level
entropy by  dH = eta * E[A * (S - H)]  (S = surprisal of the response): a
confident response (low S) with A < 0 pushes entropy up, with A > 0 pushes it
down. AEM amplifies confident responses and damps uncertain ones, using each
response's mean token entropy as a low-noise proxy for S:

    Htil  = min-max normalised proxy inside the group   (0 if the group's range
            is below min_range: the paper sets alpha = 1 there, 0.1 nats)
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

# A group whose entropy range is at most this (nats) counts as flat: below it the
# range is rounding noise (a shift by 1.0 can erase it), and normalising it would
# blow noise up to the full [0, 1] scale.
SPAN_EPS = 1e-6


def aem_weights(response_entropy: Tensor, group_index: Tensor, lam: float,
                min_range: float = 0.0) -> Tensor:
    """Per-response alpha: min-max normalise inside each group, exp(-lam * .), mean 1.

    A group whose range max - min is at most max(min_range, SPAN_EPS) gets alpha = 1
    for every response (the paper uses min_range = 0.1).
    """
    h = response_entropy.detach().double()
    if h.shape != group_index.shape:
        raise ValueError(f"entropy {tuple(h.shape)} and groups {tuple(group_index.shape)} disagree")
    if not torch.isfinite(h).all():
        raise ValueError("response entropies must be finite")
    if min_range < 0:
        raise ValueError(f"min_range must be >= 0, got {min_range}")
    inv, g = dense_groups(group_index)
    lo = group_reduce(h, inv, g, "amin")[inv]
    span = group_reduce(h, inv, g, "amax")[inv] - lo
    spread = span > max(min_range, SPAN_EPS)
    h_norm = torch.where(spread, (h - lo) / torch.where(spread, span, 1.0), 0.0)
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
    min_range: float = 0.0,
    trainable: Tensor | None = None,
) -> AEMResult:
    """Rescale trajectory advantages into per-turn advantages.

    traj_advantages, traj_group: [N] one per trajectory (group = task).
    turn_entropy: [R] mean token entropy of each assistant turn; turn_traj: [R]
    index of its trajectory. Turn level pools every turn of a group's
    trajectories; trajectory level uses one proxy per trajectory (the token-
    weighted mean when `turn_lengths` is given) and broadcasts its alpha.
    trainable: [N] bool, the trajectories that enter the loss; only their turns
    form the group normaliser (the others, masked out by compact filtering, keep
    alpha = 1 and never train). min_range: see `aem_weights`.
    """
    if turn_entropy.shape != turn_traj.shape:
        raise ValueError("turn_entropy and turn_traj must have the same shape")
    n = traj_advantages.shape[0]
    keep = torch.ones(n, dtype=torch.bool) if trainable is None else trainable.bool()
    if keep.shape != (n,):
        raise ValueError(f"trainable must have shape ({n},), got {tuple(keep.shape)}")
    base = traj_advantages[turn_traj]
    turn_entropy = turn_entropy.detach()
    if level == "turn":
        alpha = torch.ones(turn_entropy.shape, dtype=torch.float64)
        used = keep[turn_traj]
        alpha[used] = aem_weights(turn_entropy[used], traj_group[turn_traj][used], lam,
                                  min_range).double()
    elif level == "trajectory":
        h = turn_entropy.double()
        w = turn_lengths.double() if turn_lengths is not None else torch.ones_like(h)
        num = torch.zeros(n, dtype=h.dtype).index_add_(0, turn_traj, h * w)
        den = torch.zeros(n, dtype=h.dtype).index_add_(0, turn_traj, w)
        used = (den > 0) & keep
        traj_alpha = torch.ones(n, dtype=h.dtype)
        traj_alpha[used] = aem_weights(num[used] / den[used], traj_group[used], lam, min_range)
        alpha = traj_alpha[turn_traj]
    else:
        raise ValueError(f"unknown AEM level {level!r}; use 'turn' or 'trajectory'")
    alpha = alpha.detach().to(base.dtype)
    return AEMResult(turn_advantages=alpha * base, alpha=alpha)
