"""Policy losses, registered by name so configs can pick them (`algo.policy_loss`).

ppo_clip (PPO-clip with clip-higher), reinforce (the unclipped importance-weighted
policy gradient) and gspo (GSPO's sequence-level ratio, token-level advantages);
each shares the loss aggregation modes, the k3 KL term and truncated importance
sampling (TIS). All inputs are [B, T] token tensors; `mask` is 1 on tokens the
policy sampled and 0 on prompts, tool observations, template glue and padding,
which then contribute nothing. Adding a loss is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

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
    name: str = "ppo_clip"  # a key of POLICY_LOSSES


class PolicyLossFn(Protocol):
    """What ppo_update calls: [B, T] tensors in, (scalar loss, detached stats) out."""

    def __call__(
        self,
        logprobs: Tensor,
        old_logprobs: Tensor,
        advantages: Tensor,
        mask: Tensor,
        cfg: PolicyLossConfig = ...,
        ref_logprobs: Tensor | None = None,
        rollout_logprobs: Tensor | None = None,
        normalizer: float | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]: ...


POLICY_LOSSES: dict[str, PolicyLossFn] = {}


def register_policy_loss(name: str) -> Callable[[PolicyLossFn], PolicyLossFn]:
    """Decorator: make a loss selectable as `algo.policy_loss=name`."""
    def decorate(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name!r} registered twice")
        POLICY_LOSSES[name] = fn
        return fn

    return decorate


def get_policy_loss(name: str) -> PolicyLossFn:
    try:
        return POLICY_LOSSES[name]
    except KeyError:
        known = ", ".join(sorted(POLICY_LOSSES))
        raise KeyError(f"unknown policy loss {name!r}; known: {known}") from None


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, cfg: PolicyLossConfig
) -> tuple[Tensor, Tensor]:
    """Per-token max(-A r, -A clip(r)) and where the clipped side won (no gradient there)."""
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def _finish(
    per_token: Tensor,
    clipped: Tensor,
    ratio: Tensor,
    logprobs: Tensor,
    old_logprobs: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig,
    ref_logprobs: Tensor | None,
    rollout_logprobs: Tensor | None,
    normalizer: float | None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """What every loss shares: TIS weight, k3 KL term, aggregation and the stats.

    With `rollout_logprobs` and `tis_cap`, each token is weighted by
    min(pi_old / pi_rollout, cap) to correct for the rollout engine's sampler
    differing from the trainer (dtype, kernels).
    """
    m = mask.to(logprobs.dtype)
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
        log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)
        stats = {
            "clip_frac": (clipped.to(m.dtype) * m).sum() / n,
            "approx_kl": (0.5 * log_ratio**2 * m).sum() / n,
            "ratio_mean": (ratio * m).sum() / n,
        }
    return loss, stats


@register_policy_loss("ppo_clip")
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
    """Clipped surrogate: ratio = pi / pi_old per token, clipped to [1 - clip_low, 1 + clip_high]."""
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    per_token, clipped = _clipped_surrogate(ratio, advantages, cfg)
    return _finish(per_token, clipped, ratio, logprobs, old_logprobs, mask, cfg,
                   ref_logprobs, rollout_logprobs, normalizer)


@register_policy_loss("reinforce")
def reinforce_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    ref_logprobs: Tensor | None = None,
    rollout_logprobs: Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain policy gradient: -A * pi / pi_old, never clipped (clip_low/high unused).

    On policy (ratio 1) its gradient is REINFORCE's -A * grad log pi; the ratio
    keeps it an unbiased importance-weighted gradient on later mini-batches.
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    return _finish(-advantages * ratio, torch.zeros_like(ratio, dtype=torch.bool), ratio, logprobs,
                   old_logprobs, mask, cfg, ref_logprobs, rollout_logprobs, normalizer)


@register_policy_loss("gspo")
def gspo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    cfg: PolicyLossConfig = PolicyLossConfig(),
    ref_logprobs: Tensor | None = None,
    rollout_logprobs: Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025), token form: one ratio per sequence (row), clipped as a whole.

    s = exp(mean over the row's sampled tokens of log pi - log pi_old). Token t
    uses the ratio sg(s) * pi_t / sg(pi_t): its value is s, its gradient s * grad
    log pi_t, so per-token (per-turn, AEM-scaled) advantages still apply. GSPO
    pairs it with agg=seq-mean-token-mean and much smaller clip ranges (3e-4 / 4e-4).
    """
    m = mask.to(logprobs.dtype)
    token_log_ratio = torch.where(m > 0, logprobs - old_logprobs, 0.0)
    seq_log_ratio = (token_log_ratio.sum(-1) / m.sum(-1).clamp(min=1)).clamp(-20.0, 20.0)
    ratio = torch.exp(seq_log_ratio.detach().unsqueeze(-1) + logprobs - logprobs.detach())
    per_token, clipped = _clipped_surrogate(ratio, advantages, cfg)
    return _finish(per_token, clipped, ratio, logprobs, old_logprobs, mask, cfg,
                   ref_logprobs, rollout_logprobs, normalizer)
