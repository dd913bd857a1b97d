"""Policy losses, registered by name so configs can pick them (`algo.policy_loss`).

ppo_clip (PPO-clip with clip-higher), reinforce (the unclipped importance-weighted
policy gradient) and gspo (GSPO's sequence-level ratio, token-level advantages);
each shares the loss aggregation modes, the k3 KL term and the rollout/trainer
mismatch correction (truncated importance weights per token, response or geometric
mean, and a mask band: `rollout_is_weights`). The clipped losses take dual-clip
(`clip_ratio_c`). All inputs are [B, T] token tensors; `mask` is 1 on tokens the
policy sampled and 0 on prompts, tool observations, template glue and padding,
which then contribute nothing. `turn` (optional, [B, T]) labels each sampled token
with its assistant turn, the unit of per-turn GSPO and of per-turn rollout weights.
Adding a loss is one decorated function.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

LossAgg = Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]
LOSS_AGG_MODES: tuple[str, ...] = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
RolloutIsLevel = Literal["token", "sequence", "geometric"]
ROLLOUT_IS_LEVELS: tuple[str, ...] = ("token", "sequence", "geometric")
Unit = Literal["turn", "trajectory"]
UNITS: tuple[str, ...] = ("turn", "trajectory")


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
    """The loss settings of `algo` (swe_aem/config.py AlgoConfig says what each means)."""

    clip_low: float = 0.2
    clip_high: float = 0.28
    agg: LossAgg = "token-mean"
    kl_coef: float = 0.0
    tis_cap: float | None = None  # truncated importance weight cap (rollout vs trainer)
    name: str = "ppo_clip"  # a key of POLICY_LOSSES
    clip_ratio_c: float | None = None  # dual-clip: loss of A < 0 bounded by c |A| (c > 1)
    rollout_is: RolloutIsLevel = "token"  # what the weight / mask is taken over
    rollout_is_unit: Unit = "turn"  # a response of sequence / geometric: a turn or the trajectory
    rollout_is_mask_low: float | None = None  # a unit whose weight is below this is masked
    rollout_is_mask_high: float | None = None  # ... or above this
    gspo_unit: Unit = "trajectory"  # GSPO's one ratio: per trajectory (row) or per turn

    def __post_init__(self) -> None:
        if self.clip_ratio_c is not None and not self.clip_ratio_c > 1.0:
            raise ValueError(f"clip_ratio_c must be > 1 (got {self.clip_ratio_c}): it bounds "
                             "the loss of a negative advantage at c |A|, above the clipped 1 - clip_low")
        if self.rollout_is not in ROLLOUT_IS_LEVELS:
            raise ValueError(f"rollout_is {self.rollout_is!r} not in {ROLLOUT_IS_LEVELS}")
        for name in ("rollout_is_unit", "gspo_unit"):
            if getattr(self, name) not in UNITS:
                raise ValueError(f"{name} {getattr(self, name)!r} not in {UNITS}")
        lo, hi = self.rollout_is_mask_low, self.rollout_is_mask_high
        if (lo is not None and lo < 0) or (lo is not None and hi is not None and not lo < hi):
            raise ValueError(f"the rollout mask band [{lo}, {hi}] needs 0 <= low < high")


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
        turn: Tensor | None = None,
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
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token max(-A r, -A clip(r)), where the clipped side won (no gradient there),
    and where dual-clip bounded it.

    Dual-clip (Ye et al. 2020; verl's clip_ratio_c): for A < 0 the clipped loss grows
    without bound in r (a token the policy now favours far more than when sampled); with
    `clip_ratio_c` = c it is min(that, -A c) = at most c |A|, and no gradient flows there.
    """
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
    loss = torch.maximum(unclipped, clipped)
    if cfg.clip_ratio_c is None:
        return loss, clipped > unclipped, torch.zeros_like(loss, dtype=torch.bool)
    bound = -advantages * cfg.clip_ratio_c
    dual = (advantages < 0) & (loss > bound)
    return torch.where(dual, bound, loss), clipped > unclipped, dual


def segment_ids(mask: Tensor, turn: Tensor | None, unit: Unit) -> Tensor:
    """[B, T] ids of the unit each sampled token belongs to (-1 where mask is 0): its row
    (`trajectory`) or its assistant turn (`turn`, from the per-token `turn` labels).
    Turn labels are taken per row, so two rows never share a unit."""
    m = mask > 0
    rows = torch.arange(mask.shape[0], device=mask.device).unsqueeze(-1).expand_as(mask)
    if unit == "trajectory":
        return torch.where(m, rows, -1)
    if turn is None:
        raise ValueError("a per-turn unit needs the per-token `turn` labels")
    if bool((m & (turn < 0)).any()):
        raise ValueError("a sampled token (mask 1) has no turn label (turn < 0)")
    # (row, turn) pairs as one id: turn labels may repeat across rows
    width = int(turn.max().clamp(min=0)) + 1
    return torch.where(m, rows * width + turn.clamp(min=0), -1)


def segment_reduce(values: Tensor, segments: Tensor, mean: bool) -> Tensor:
    """Each token's segment sum (or mean) of `values` over the tokens with segments >= 0,
    broadcast back to [B, T] (0 elsewhere). No gradient: it reduces log-ratios whose
    value, not derivative, the losses use."""
    values = values.detach()
    out = torch.zeros_like(values)
    sel = segments >= 0
    if not bool(sel.any()):
        return out
    _, inverse = torch.unique(segments[sel], return_inverse=True)
    n = int(inverse.max()) + 1
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, inverse, values[sel])
    if mean:
        counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(
            0, inverse, torch.ones_like(values[sel]))
        sums = sums / counts
    out[sel] = sums[inverse]
    return out


def rollout_is_weights(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, cfg: PolicyLossConfig,
    turn: Tensor | None = None,
) -> tuple[Tensor | None, Tensor]:
    """The rollout/trainer mismatch correction: per-token weights (None: no weighting)
    and the [B, T] bool of sampled tokens masked out of the loss.

    The raw weight is pi_old / pi_rollout, the trainer's probability of the sampled token
    over the one the rollout engine reported (dtype, kernels; in asynchronous training the
    proximal weights over the stale behaviour ones). `rollout_is` takes it per `token`
    (today's TIS), per response as the product over its tokens (`sequence`: the unbiased
    sequence weight, heavy-tailed over long responses) or as the geometric mean of its
    tokens' weights (`geometric`: per-token scale, comparable across lengths); a response is
    a turn or the whole trajectory (`rollout_is_unit`). `tis_cap` truncates the weight
    from above (null: no weight); separately, a unit whose untruncated weight falls outside
    [rollout_is_mask_low, rollout_is_mask_high] (either side null: unbounded) has every
    token masked: weight 0, so it adds nothing to the gradient but stays in the loss's
    normaliser, which keeps micro-batches adding up to the mini-batch.
    """
    m = mask > 0
    log_w = (old_logprobs - rollout_logprobs).detach()
    if cfg.rollout_is != "token":
        segments = segment_ids(mask, turn, cfg.rollout_is_unit)
        log_w = segment_reduce(torch.where(m, log_w, 0.0), segments, mean=cfg.rollout_is == "geometric")
    log_w = log_w.clamp(max=20.0)
    weights = None if cfg.tis_cap is None else torch.exp(log_w).clamp(max=cfg.tis_cap)
    masked = torch.zeros_like(m)
    lo, hi = cfg.rollout_is_mask_low, cfg.rollout_is_mask_high
    if lo is not None:
        masked |= log_w < (math.log(lo) if lo > 0 else -math.inf)
    if hi is not None:
        masked |= log_w > math.log(hi)
    masked &= m
    if lo is not None or hi is not None:
        keep = (~masked).to(old_logprobs.dtype)
        weights = keep if weights is None else weights * keep
    return weights, masked


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
    turn: Tensor | None = None,
    dual: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """What every loss shares: the rollout/trainer correction (`rollout_is_weights`: with
    `rollout_logprobs`, `tis_cap` or a mask band), k3 KL term, aggregation and the stats.

    Stats (token means over the sampled tokens): clip_frac, dual_clip_frac (where
    dual-clip bounded the loss), is_masked_frac (tokens the mask band dropped), approx_kl,
    ratio_mean.
    """
    m = mask.to(logprobs.dtype)
    masked = torch.zeros_like(mask, dtype=torch.bool)
    if rollout_logprobs is not None:
        weights, masked = rollout_is_weights(old_logprobs, rollout_logprobs, mask, cfg, turn)
        if weights is not None:
            per_token = per_token * weights.detach()
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
            "dual_clip_frac": ((torch.zeros_like(m) if dual is None else dual.to(m.dtype)) * m).sum() / n,
            "is_masked_frac": (masked.to(m.dtype) * m).sum() / n,
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
    turn: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate: ratio = pi / pi_old per token, clipped to [1 - clip_low, 1 + clip_high]."""
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    per_token, clipped, dual = _clipped_surrogate(ratio, advantages, cfg)
    return _finish(per_token, clipped, ratio, logprobs, old_logprobs, mask, cfg,
                   ref_logprobs, rollout_logprobs, normalizer, turn, dual)


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
    turn: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Plain policy gradient: -A * pi / pi_old, never clipped (clip_low/high unused).

    On policy (ratio 1) its gradient is REINFORCE's -A * grad log pi; the ratio
    keeps it an unbiased importance-weighted gradient on later mini-batches.
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-20.0, 20.0))
    return _finish(-advantages * ratio, torch.zeros_like(ratio, dtype=torch.bool), ratio, logprobs,
                   old_logprobs, mask, cfg, ref_logprobs, rollout_logprobs, normalizer, turn)


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
    turn: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025), token form: one ratio per sequence, clipped as a whole.

    s = exp(mean over the unit's sampled tokens of log pi - log pi_old), the unit being
    the row, a whole trajectory (`gspo_unit=trajectory`), or each assistant turn
    (`gspo_unit=turn`: AEM's response, so a 50-turn trajectory has 50 ratios, each
    clipped on its own). Token t uses the ratio sg(s) * pi_t / sg(pi_t): its value is s,
    its gradient s * grad log pi_t, so per-token (per-turn, AEM-scaled) advantages still
    apply. GSPO pairs it with agg=seq-mean-token-mean and much smaller clip ranges
    (clip_low 3e-4, clip_high 4e-4, against PPO's 0.2 / 0.28).
    """
    m = mask.to(logprobs.dtype)
    token_log_ratio = torch.where(m > 0, logprobs - old_logprobs, 0.0)
    if cfg.gspo_unit == "turn":
        unit_log_ratio = segment_reduce(token_log_ratio, segment_ids(mask, turn, "turn"), mean=True)
        unit_log_ratio = unit_log_ratio.clamp(-20.0, 20.0)
    else:
        seq_log_ratio = (token_log_ratio.sum(-1) / m.sum(-1).clamp(min=1)).clamp(-20.0, 20.0)
        unit_log_ratio = seq_log_ratio.detach().unsqueeze(-1)
    ratio = torch.exp(unit_log_ratio + logprobs - logprobs.detach())
    per_token, clipped, dual = _clipped_surrogate(ratio, advantages, cfg)
    return _finish(per_token, clipped, ratio, logprobs, old_logprobs, mask, cfg,
                   ref_logprobs, rollout_logprobs, normalizer, turn, dual)
