"""Trainer forward passes and the PPO update over micro-batches.

`engine` is a DeepSpeed engine wrapping `PolicyLogprobs`: calling it returns
per-token (log-prob, entropy); `engine.backward` accumulates; `engine.step`
applies one optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from swe_aem.algo.losses import PolicyLossConfig, get_policy_loss
from swe_aem.config import AlgoConfig
from swe_aem.train import ranks
from swe_aem.train.batch import (
    Sample,
    TurnLayout,
    UpdatePlan,
    collate,
    computed_tokens,
    pack_by_tokens,
    padding_batch,
)


@dataclass
class ForwardStats:
    """Trainer-side per-token values before the update, kept per sample."""

    old_logprobs: list[Tensor]  # [len-1] per sample
    turn_entropy: Tensor  # [R] mean token entropy of each turn (the AEM proxy)
    turn_lengths: Tensor  # [R] sampled tokens per turn
    turn_surprisal: Tensor  # [R] -sum log p of the turn's tokens (trainer)
    rollout_kl: float  # k3 estimate of the rollout-vs-trainer KL per sampled token
    tokens: int
    # range of the importance weight trainer/rollout (proximal over behaviour) per sampled
    # token, the one a TIS cap truncates: stale tokens (asynchronous training) widen it
    is_weight_min: float = 1.0
    is_weight_max: float = 1.0
    # tokens the forwards computed (padding included) over the sampled sequences' tokens
    computed_over_real: float = 1.0
    # forward_old(token_entropy=True): each sample's sampled tokens' entropies, in position
    # order ([tokens] per sample; every sample's on rank 0, gathered from the ranks that
    # scored them, empty elsewhere); None when not asked for (run.record_token_entropy)
    token_entropy: list[Tensor] | None = None


def policy_loss_config(algo: AlgoConfig) -> PolicyLossConfig:
    """The loss settings of the run's `algo` section, as the registered losses take them."""
    return PolicyLossConfig(
        clip_low=algo.clip_low, clip_high=algo.clip_high, agg=algo.loss_agg,  # type: ignore[arg-type]
        kl_coef=algo.kl_coef, tis_cap=algo.tis_cap, name=algo.policy_loss,
        clip_ratio_c=algo.clip_ratio_c, rollout_is=algo.rollout_is,  # type: ignore[arg-type]
        rollout_is_unit=algo.rollout_is_unit,  # type: ignore[arg-type]
        rollout_is_mask_low=algo.rollout_is_mask_low, rollout_is_mask_high=algo.rollout_is_mask_high,
        gspo_unit=algo.gspo_unit)  # type: ignore[arg-type]


def set_lr(engine, lr: float) -> float:
    """Give every parameter group of the engine's optimizer learning rate `lr` (ZeRO's
    optimizers expose their inner optimizer's groups; DeepSpeed's CPU Adam reads the group's
    rate at each step) and return it as the engine reports it. The rate of an RL step comes
    from `swe_aem.algo.schedule.lr_factor`."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    return float(engine.get_lr()[0])


def _device(engine) -> torch.device:
    return next(engine.module.parameters()).device


@torch.no_grad()
def forward_old(engine, samples: Sequence[Sample], layout: TurnLayout, micro_tokens: int,
                pad_id: int, indices: Sequence[int] | None = None, temperature: float = 1.0,
                packed: bool = False, token_entropy: bool = False) -> ForwardStats:
    """Old log-probs and token entropies on the exact rollout tokens, at the rollout's
    sampling `temperature`; micro-batches padded, or `packed` into one row each (no padding).

    Each data-parallel rank passes its shard as `indices`; per-turn statistics
    are summed over ranks (each turn lives on exactly one rank), so every rank
    ends with the same turn-level proxy for AEM. `token_entropy` also keeps each sampled
    token's entropy per sample (the values the turn means are taken over), gathered to rank
    0 for the credit record (run.record_token_entropy); off, nothing more is kept or sent.
    """
    dev = _device(engine)
    shard = list(range(len(samples))) if indices is None else list(indices)
    old: list[Tensor] = [torch.empty(0)] * len(samples)
    per_token: dict[int, Tensor] = {}  # sample -> its sampled tokens' entropies (token_entropy)
    ent_flat, turn_flat, lp_flat, roll_flat = [], [], [], []
    lengths = [len(samples[i].input_ids) for i in shard]
    micro = [[shard[j] for j in idx] for idx in pack_by_tokens(lengths, micro_tokens, packed)]
    n_micro = int(ranks.all_reduce(len(micro), dev, op="max"))
    for k in range(n_micro):
        b = collate(samples, micro[k], layout, pad_id, packed) if k < len(micro) else padding_batch(pad_id)
        lp, ent = run_policy(engine, b, dev, temperature)
        if k >= len(micro):
            continue  # a padding forward for ZeRO-3's collectives
        lp, ent = lp.float().cpu(), ent.float().cpu()
        sampled = b["turn"] >= 0
        for i, (row, start, n) in zip(micro[k], b["segments"].tolist()):
            old[i] = lp[row, start:start + n].clone()
            if token_entropy:
                per_token[i] = ent[row, start:start + n][sampled[row, start:start + n]]
        ent_flat.append(ent[sampled])
        turn_flat.append(b["turn"][sampled])
        lp_flat.append(lp[sampled])
        roll_flat.append(b["rollout_logprobs"][sampled])
    r = layout.num_turns
    empty = torch.empty(0)
    ent_t, lp_t, roll_t = (torch.cat(x or [empty]) for x in (ent_flat, lp_flat, roll_flat))
    turn_t = torch.cat(turn_flat or [empty.long()])
    delta = (roll_t.double() - lp_t.double()).clamp(-20, 20)  # float32 rounds k3 of ~1e-5 gaps to 0
    # per-turn sums, then one all-reduce: [entropy sum, token count, surprisal] x R, plus KL sum
    sums = torch.zeros(3 * r + 1, dtype=torch.float64)
    sums[:r].index_add_(0, turn_t, ent_t.double())
    sums[r:2 * r].index_add_(0, turn_t, torch.ones_like(ent_t, dtype=torch.float64))
    sums[2 * r:3 * r].index_add_(0, turn_t, -lp_t.double())
    sums[3 * r] = (delta.exp() - delta - 1).clamp(min=0).sum()  # >= 0 up to rounding
    sums = ranks.all_reduce_tensor(sums, dev)
    turn_lengths = sums[r:2 * r].float()
    tokens = float(turn_lengths.sum())
    # log of the weight's extremes, as maxima (an empty shard contributes nothing)
    hi = float(-delta.min()) if delta.numel() else -math.inf
    lo = float(delta.max()) if delta.numel() else -math.inf
    hi, lo = ranks.all_reduce(hi, dev, op="max"), ranks.all_reduce(lo, dev, op="max")
    # tokens the forwards computed (padding and the one-token padding forwards counted) over
    # the real ones, summed over ranks: the padding's overhead
    work = ranks.all_reduce_tensor(torch.tensor(
        [computed_tokens(lengths, pack_by_tokens(lengths, micro_tokens, packed), packed)
         + (n_micro - len(micro)), sum(lengths)], dtype=torch.float64), dev)
    return ForwardStats(old, (sums[:r] / sums[r:2 * r].clamp(min=1)).float(), turn_lengths,
                        sums[2 * r:3 * r].float(), float(sums[3 * r]) / max(tokens, 1.0), int(tokens),
                        is_weight_min=math.exp(-lo) if tokens else 1.0,
                        is_weight_max=math.exp(hi) if tokens else 1.0,
                        computed_over_real=float(work[0] / work[1].clamp(min=1)),
                        token_entropy=_on_rank0(per_token, len(samples)) if token_entropy else None)


def _on_rank0(per_token: dict[int, Tensor], n: int) -> list[Tensor]:
    """Every sample's token entropies on rank 0, each from the rank that scored it (a
    gather to rank 0 alone: the others get an empty list back)."""
    parts = ranks.gather_to_rank0(per_token)
    if parts is None:
        return []
    merged = {i: t for part in parts for i, t in part.items()}
    return [merged.get(i, torch.empty(0)) for i in range(n)]


def run_policy(engine, b: dict[str, Tensor], dev: torch.device, temperature: float) -> tuple[Tensor, Tensor]:
    """The engine on one collated micro-batch: padded rows with their attention mask, or a
    packed row with restarting positions and no mask (attention kept within each sample)."""
    if "position_ids" in b:
        return engine(b["input_ids"].to(dev), None, b["targets"].to(dev), temperature,
                      position_ids=b["position_ids"].to(dev))
    return engine(b["input_ids"].to(dev), b["attention_mask"].to(dev), b["targets"].to(dev), temperature)


def ppo_update(
    engine,
    samples: Sequence[Sample],
    layout: TurnLayout,
    old_logprobs: Sequence[Tensor],
    turn_advantages: Tensor,
    loss_cfg: PolicyLossConfig,
    micro_tokens: int,
    pad_id: int,
    mini_batches: int = 1,
    epochs: int = 1,
    generator: torch.Generator | None = None,
    indices: Sequence[int] | None = None,
    temperature: float = 1.0,
    plan: UpdatePlan | None = None,
    packed: bool = False,
) -> dict[str, float]:
    """The policy loss named by `loss_cfg.name` (PPO-clip by default) over `epochs` x
    `mini_batches` optimizer steps; returns stats of the whole batch (every rank's).

    Micro-batch losses use the mini-batch's global normaliser (tokens or
    sequences, summed over data-parallel ranks) and are scaled by the world size
    because DeepSpeed averages gradients over ranks; so micro-batching and data
    parallelism leave the gradient unchanged. `grad_norm` is the global gradient
    norm before clipping, averaged over optimizer steps. Log-probs are taken at the
    rollout's sampling `temperature`, as in `forward_old`.

    `plan` (swe_aem.train.batch.plan_update): which samples this rank trains in each
    mini-batch, each mini-batch balanced over the ranks by workload and the same in every
    epoch; without it, each epoch draws mini-batches from `generator` and intersects them with
    `indices` (a whole-batch shard, so a mini-batch's long tail can sit on one rank).
    """
    loss_fn = get_policy_loss(loss_cfg.name)
    dev = _device(engine)
    world = ranks.world_size()
    shard = set(range(len(samples)) if indices is None else indices)
    totals: dict[str, float] = {}
    stat_keys: set[str] = set()  # the same on every rank that ran a micro-batch (padding too)
    tokens, steps = 0.0, 0
    grad_norms: list[float] = []
    rank = ranks.rank()
    for _ in range(epochs):
        if plan is not None:  # each mini-batch balanced over the ranks, kept across epochs
            parts = [mb[rank] for mb in plan.minibatches]
        else:
            order = torch.randperm(len(samples), generator=generator).tolist()
            parts = [[i for i in order[mb::mini_batches] if i in shard] for mb in range(mini_batches)]
        for members in parts:
            chosen = [i for i in members if samples[i].trainable and any(samples[i].loss_mask)]
            local = (sum(sum(samples[i].loss_mask) for i in chosen)
                     if loss_cfg.agg == "token-mean" else len(chosen))
            normalizer = ranks.all_reduce(float(local), dev)
            if normalizer == 0:
                continue
            micro = [[chosen[j] for j in idx] for idx in
                     pack_by_tokens([len(samples[i].input_ids) for i in chosen], micro_tokens, packed)]
            # ZeRO-3 gathers parameters collectively in every forward, so all ranks
            # run the same number of micro-batches; the extra ones carry zero loss.
            n_micro = int(ranks.all_reduce(len(micro), dev, op="max"))
            for k in range(n_micro):
                ids, weight = (micro[k], 1.0) if k < len(micro) else ([], 0.0)
                b = collate(samples, ids, layout, pad_id, packed) if ids else padding_batch(pad_id)
                old = torch.zeros_like(b["rollout_logprobs"])
                for i, (row, start, n) in zip(ids, b["segments"].tolist()):
                    old[row, start:start + n] = old_logprobs[i]
                turn = b["turn"]
                adv = torch.where(turn >= 0, turn_advantages[turn.clamp(min=0)], 0.0)
                lp, _ = run_policy(engine, b, dev, temperature)
                loss, stats = loss_fn(
                    lp.float(), old.to(dev), adv.to(dev), b["loss_mask"].to(dev), loss_cfg,
                    rollout_logprobs=b["rollout_logprobs"].to(dev), normalizer=normalizer,
                    turn=turn.to(dev),
                )
                engine.backward(loss * (world * weight), scale_wrt_gas=False)
                stat_keys.update(stats)
                if weight:
                    # stats are token means of the micro-batch: weighted by its tokens, their
                    # mean is the batch's, however ranks and micro-batches split it
                    tokens += float(b["loss_mask"].sum())
                    totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
                    for key, v in stats.items():
                        totals[key] = totals.get(key, 0.0) + float(v) * float(b["loss_mask"].sum())
            engine.step()
            steps += 1
            norm = engine.get_global_grad_norm()
            if norm is not None:
                grad_norms.append(float(norm))
    # each rank saw its shard: sum over ranks (a micro loss is already a share of the global one)
    keys = sorted(stat_keys)
    local = torch.tensor([totals.get("loss", 0.0), tokens] + [totals.get(k, 0.0) for k in keys],
                         dtype=torch.float64)
    summed = ranks.all_reduce_tensor(local, dev).tolist()
    out = {k: v / max(summed[1], 1.0) for k, v in zip(keys, summed[2:])}
    out["loss"] = summed[0] / max(steps, 1)  # micro losses add up per mini-batch
    out["optimizer_steps"] = float(steps)
    if grad_norms:
        out["grad_norm"] = sum(grad_norms) / len(grad_norms)
    return out
