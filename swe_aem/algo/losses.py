"""PPO-clip policy loss with clip-higher, loss aggregation modes, k3 KL and TIS.

All inputs are [B, T] token tensors; `mask` is 1 on tokens the policy sampled
and 0 on prompts, tool observations, template glue and padding, which then
contribute nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]
LOSS_AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")


def aggregate(loss: Tensor, mask: Tensor, mode: LossAgg, normalizer: float | None = None) -> Tensor:
    """Reduce a [B, T] per-token loss to a scalar.

    token-mean: sum over all tokens / number of tokens.
    seq-mean-token-sum: per sequence sum, averaged over sequences.
    seq-mean-token-mean: per sequence mean, averaged over sequences.
    Sequences without any unmasked token are not counted. `normalizer`
    replaces the denominator (token or sequence count of the whole
    mini-batch) so that micro-batches add up to the mini-batch loss.
    """
    mask = mask.to(loss.dtype)
    masked = loss * mask
    if mode == "token-mean":
        denom = mask.sum() if normalizer is None else normalizer
        return masked.sum() / max(float(denom), 1.0)
    tokens = mask.sum(dim=-1)
    seq = masked.sum(dim=-1)
    if mode == "seq-mean-token-mean":
        seq = seq / tokens.clamp(min=1)
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"unknown loss aggregation {mode!r}; use one of {LOSS_AGG_MODES}")
    denom = (tokens > 0).sum() if normalizer is None else normalizer
    return seq.sum() / max(float(denom), 1.0)


def kl_low_var(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 estimator of KL(pi || ref): exp(r) - r - 1 with r = ref - logp; >= 0, unbiased."""
    r = (ref_logprobs - logprobs).clamp(-20.0, 20.0)
    return torch.exp(r) - r - 1.0


@dataclass(frozen=True)
class PolicyLossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.28
    agg: LossAgg = "token-mean"
    kl_coef: float = 0.0
    tis_cap: float | None = None  # truncated importance weight cap (rollout vs trainer)


def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    ref_logprobs: Tensor | None = None,
    rollout_logprobs: Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate; returns (loss, detached stats).

    ratio = pi / pi_old is clipped to [1 - clip_low, 1 + clip_high]. With
    `rollout_logprobs` and `tis_cap`, each token is weighted by
    min(pi_old / pi_rollout, cap) to correct for the rollout engine's sampler
    differing from the trainer (dtype, kernels).
    """
    m = mask.to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if rollout_logprobs is not None and cfg.tis_cap is not None:
        tis = torch.exp((old_logprobs - rollout_logprobs).clamp(max=20.0)).clamp(max=cfg.tis_cap)
        per_token = per_token * tis.detach()
    if cfg.kl_coef > 0:
        if ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        per_token = per_token + cfg.kl_coef * kl_low_var(logprobs, ref_logprobs)
    loss = aggregate(per_token, m, cfg.agg, normalizer)
    with torch.no_grad():
        n = m.sum().clamp(min=1)
        stats = {
            "clip_frac": ((clipped > unclipped).to(m.dtype) * m).sum() / n,
            "approx_kl": (0.5 * log_ratio**2 * m).sum() / n,
            "ratio_mean": (ratio * m).sum() / n,
        }
    return loss, stats
