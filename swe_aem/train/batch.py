"""From episodes to trainer tensors (pure: no I/O, no model).

Each trajectory becomes one sequence. Token t of the model input predicts
token t+1, so every per-token field is shifted by one: position t holds the
target id, loss mask, rollout log-prob and turn of token t+1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from swe_aem.agent.trajectory import Episode
from swe_aem.algo.advantages import get_advantage_estimator


@dataclass(frozen=True)
class Sample:
    """One trajectory as the trainer sees it."""

    input_ids: list[int]
    loss_mask: list[int]
    rollout_logprobs: list[float]
    turn_index: list[int]  # turn of a sampled token, -1 elsewhere
    group: int  # the task this trajectory was sampled for
    reward: float
    trainable: bool  # False: compact-filtered (kept for the baseline, out of the loss)

    @property
    def num_turns(self) -> int:
        return max(self.turn_index, default=-1) + 1


def samples_from_episodes(
    episodes: Sequence[Episode], filter_terminations: Sequence[str] = ()
) -> list[Sample]:
    """Graded episodes -> samples; the group is the instance id's position of first appearance."""
    groups: dict[str, int] = {}
    out = []
    for ep in episodes:
        if ep.reward is None:
            raise ValueError(f"episode {ep.instance_id}#{ep.sample_index} has not been graded")
        flat = ep.flatten()
        if not flat.input_ids:
            raise ValueError(f"episode {ep.instance_id}#{ep.sample_index} has no tokens")
        out.append(Sample(
            input_ids=flat.input_ids, loss_mask=flat.loss_mask,
            rollout_logprobs=flat.rollout_logprobs, turn_index=flat.turn_index,
            group=groups.setdefault(ep.instance_id, len(groups)), reward=float(ep.reward),
            trainable=ep.termination not in filter_terminations,
        ))
    return out


def encode_samples(samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    """Samples as a few flat arrays, what rank 0 sends the other ranks (not the episodes:
    their texts, observations and per-turn records stay on rank 0): token ids in 16 bits when
    the vocabulary allows, turn indices in 16, the loss mask in 8, and the behaviour
    log-probs of sampled tokens only (elsewhere they are not read), in float32 as `collate`
    reads them. `decode_samples` gives the samples back."""
    lengths = np.array([len(s.input_ids) for s in samples], dtype=np.int64)
    n = int(lengths.sum())
    flat = lambda field, dtype: np.fromiter((v for s in samples for v in getattr(s, field)), dtype=dtype, count=n)
    ids = flat("input_ids", np.int64)
    turn = flat("turn_index", np.int64)
    sampled = turn >= 0
    logprobs = flat("rollout_logprobs", np.float64)
    return {"lengths": lengths,
            "input_ids": ids.astype(np.uint16 if n and ids.max() < 2 ** 16 and ids.min() >= 0 else np.int32),
            "turn_index": turn.astype(np.int16), "loss_mask": flat("loss_mask", np.int8),
            "sampled_logprobs": logprobs[sampled].astype(np.float32),
            "other_logprobs": np.unique(logprobs[~sampled]).astype(np.float32),
            "group": np.array([s.group for s in samples], dtype=np.int64),
            "reward": np.array([s.reward for s in samples], dtype=np.float64),
            "trainable": np.array([s.trainable for s in samples], dtype=np.bool_)}


def decode_samples(arrays: dict[str, np.ndarray]) -> list[Sample]:
    """The samples `encode_samples` encoded (log-probs rounded to float32)."""
    turn = arrays["turn_index"].astype(np.int64)
    fill = arrays["other_logprobs"]
    if len(fill) > 1:
        raise ValueError(f"encode_samples keeps one log-prob placeholder for unsampled tokens, got {fill.tolist()}")
    logprobs = np.full(len(turn), fill[0] if len(fill) else 0.0, dtype=np.float32)
    logprobs[turn >= 0] = arrays["sampled_logprobs"]
    ends = np.cumsum(arrays["lengths"]).tolist()
    starts = [0, *ends[:-1]]
    ids, mask = arrays["input_ids"].astype(np.int64), arrays["loss_mask"]
    return [Sample(ids[a:b].tolist(), mask[a:b].tolist(), logprobs[a:b].tolist(), turn[a:b].tolist(),
                   int(arrays["group"][k]), float(arrays["reward"][k]), bool(arrays["trainable"][k]))
            for k, (a, b) in enumerate(zip(starts, ends))]


def encoded_bytes(arrays: dict[str, np.ndarray]) -> int:
    return sum(a.nbytes for a in arrays.values())


def groups_with_signal_ids(rewards: Sequence[float], groups: Sequence[int], trainable: Sequence[bool],
                           advantage: str) -> set[int]:
    """The groups in which some trainable member gets a non-zero advantage under the
    registered estimator `advantage`: the question dynamic sampling means to ask (would this
    group move the policy?), not "do its rewards differ".

    Masked (compact-filtered) members stay in the baseline, as the trainer keeps them
    (`samples_from_episodes`): they shape the others' advantages but take none. A group whose
    members are all masked has no signal however its rewards differ; one whose trainable
    members' rewards all equal their baseline (grpo: the group mean) has none either.
    Pure: rewards in, group ids out.
    """
    if not rewards:
        return set()
    group = torch.tensor(list(groups), dtype=torch.long)
    adv = get_advantage_estimator(advantage)(torch.tensor(list(rewards), dtype=torch.float32), group)
    moves = (adv != 0) & torch.tensor(list(trainable), dtype=torch.bool)
    return {int(g) for g in group[moves].tolist()}


def groups_with_signal(episodes: Sequence[Episode], order: Sequence[str], limit: int, *,
                       advantage: str = "rloo", untrainable: Sequence[str] = ()
                       ) -> tuple[list[Episode], list[str], list[str]]:
    """Dynamic sampling: keep at most `limit` tasks with signal (`groups_with_signal_ids`:
    a trainable member with a non-zero advantage under `advantage`; episodes whose
    termination is in `untrainable` are masked, as compact filtering masks them).

    Tasks are taken in `order` (the step's task batch), so the choice is reproducible; a
    group without signal would only dilute the batch. Returns (kept episodes, kept task
    ids, dropped task ids).
    """
    index = {task: g for g, task in enumerate(dict.fromkeys(order))}
    graded = [ep for ep in episodes if ep.reward is not None and ep.instance_id in index]
    signal = groups_with_signal_ids([float(ep.reward) for ep in graded],
                                    [index[ep.instance_id] for ep in graded],
                                    [ep.termination not in untrainable for ep in graded], advantage)
    kept: list[str] = []
    for task, g in index.items():
        if len(kept) < limit and g in signal:
            kept.append(task)
    dropped = [t for t in index if t not in kept]
    chosen = set(kept)
    return [ep for ep in episodes if ep.instance_id in chosen], kept, dropped


def pack_by_tokens(lengths: Sequence[int], max_tokens: int, packed: bool = False) -> list[list[int]]:
    """Split indices into micro-batches that fit max_tokens: padded (`packed` false), their
    count x longest; packed into one row, their total.

    Longest first, so that padding is small (padded) or the bins fill (packed: first fit
    decreasing); a sequence longer than the budget gets a micro-batch of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    if packed:
        room: list[int] = []
        for i in order:
            k = next((k for k, r in enumerate(room) if lengths[i] <= r), None)
            if k is None:
                batches.append([i])
                room.append(max_tokens - lengths[i])
            else:
                batches[k].append(i)
                room[k] -= lengths[i]
        return batches
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def computed_tokens(lengths: Sequence[int], batches: Sequence[Sequence[int]], packed: bool) -> int:
    """Tokens the forwards compute for these micro-batches: rows x the longest (padded), or
    their sum (packed: no padding). Over the real tokens, the padding's overhead."""
    if packed:
        return sum(lengths[i] for b in batches for i in b)
    return sum(len(b) * max(lengths[i] for i in b) for b in batches if b)


@dataclass(frozen=True)
class TurnLayout:
    """Every assistant turn of the batch, numbered 0..R-1 across samples."""

    offsets: list[int]  # first global turn id of each sample
    turn_sample: Tensor  # [R] sample of each turn
    turn_group: Tensor  # [R] group (task) of each turn

    @classmethod
    def of(cls, samples: Sequence[Sample]) -> TurnLayout:
        offsets, sample_of, group_of = [], [], []
        for i, s in enumerate(samples):
            offsets.append(len(sample_of))
            sample_of += [i] * s.num_turns
            group_of += [s.group] * s.num_turns
        return cls(offsets, torch.tensor(sample_of, dtype=torch.long),
                   torch.tensor(group_of, dtype=torch.long))

    @property
    def num_turns(self) -> int:
        return int(self.turn_sample.numel())


def collate(
    samples: Sequence[Sample], indices: Sequence[int], layout: TurnLayout, pad_id: int,
    packed: bool = False,
) -> dict[str, Tensor]:
    """Shifted tensors for the given samples: right-padded [B, T-1] rows, or (`packed`) one
    row of every sample's T_i - 1 positions back to back with `position_ids` restarting at
    each sample, so attention stays within it (transformers builds that block-causal mask
    from the positions) and nothing is padded.

    `turn` holds the global turn id of each target token (-1 for non-sampled tokens and
    padding); `loss_mask` is 0 for compact-filtered samples; `segments` holds, per sample,
    (row, first position, positions) of its targets.
    """
    if packed:
        return _collate_packed(samples, indices, layout)
    width = max(len(samples[i].input_ids) for i in indices)
    b = len(indices)
    input_ids = torch.full((b, width), pad_id, dtype=torch.long)
    attention = torch.zeros((b, width), dtype=torch.long)
    loss_mask = torch.zeros((b, width), dtype=torch.float32)
    rollout_lp = torch.zeros((b, width), dtype=torch.float32)
    turn = torch.full((b, width), -1, dtype=torch.long)
    for row, i in enumerate(indices):
        s = samples[i]
        n = len(s.input_ids)
        input_ids[row, :n] = torch.tensor(s.input_ids)
        attention[row, :n] = 1
        if s.trainable:
            loss_mask[row, :n] = torch.tensor(s.loss_mask, dtype=torch.float32)
        rollout_lp[row, :n] = torch.tensor(s.rollout_logprobs)
        local = torch.tensor(s.turn_index)
        turn[row, :n] = torch.where(local >= 0, local + layout.offsets[i], -1)
    return {
        "input_ids": input_ids[:, :-1],
        "attention_mask": attention[:, :-1],
        "targets": input_ids[:, 1:],
        "loss_mask": loss_mask[:, 1:],
        "rollout_logprobs": rollout_lp[:, 1:],
        "turn": turn[:, 1:],
        "sample": torch.tensor(list(indices), dtype=torch.long),
        "segments": torch.tensor([[row, 0, len(samples[i].input_ids) - 1] for row, i in enumerate(indices)],
                                 dtype=torch.long),
    }


def _collate_packed(samples: Sequence[Sample], indices: Sequence[int], layout: TurnLayout) -> dict[str, Tensor]:
    parts: dict[str, list[Tensor]] = {k: [] for k in ("input_ids", "targets", "loss_mask", "rollout_logprobs",
                                                        "turn", "position_ids")}
    segments, start = [], 0
    for i in indices:
        s = samples[i]
        n = len(s.input_ids)
        ids = torch.tensor(s.input_ids)
        parts["input_ids"].append(ids[:-1])
        parts["targets"].append(ids[1:])
        mask = torch.tensor(s.loss_mask, dtype=torch.float32) if s.trainable else torch.zeros(n)
        parts["loss_mask"].append(mask[1:])
        parts["rollout_logprobs"].append(torch.tensor(s.rollout_logprobs, dtype=torch.float32)[1:])
        local = torch.tensor(s.turn_index)
        parts["turn"].append(torch.where(local >= 0, local + layout.offsets[i], -1)[1:])
        parts["position_ids"].append(torch.arange(n - 1))
        segments.append([0, start, n - 1])
        start += n - 1
    out = {k: torch.cat(v).unsqueeze(0) for k, v in parts.items()}
    out["sample"] = torch.tensor(list(indices), dtype=torch.long)
    out["segments"] = torch.tensor(segments, dtype=torch.long)
    return out


def padding_batch(pad_id: int) -> dict[str, Tensor]:
    """The one-token micro-batch a rank with none left runs so that ZeRO-3's collectives
    stay in step (its result is dropped, its loss weighted 0): one position, not a sample."""
    one = torch.full((1, 1), pad_id, dtype=torch.long)
    return {"input_ids": one, "attention_mask": torch.ones((1, 1), dtype=torch.long), "targets": one.clone(),
            "loss_mask": torch.zeros((1, 1)), "rollout_logprobs": torch.zeros((1, 1)),
            "turn": torch.full((1, 1), -1, dtype=torch.long), "sample": torch.zeros(0, dtype=torch.long),
            "segments": torch.zeros((0, 3), dtype=torch.long)}


# Attention's quadratic term in a sequence's cost, as a number of tokens: a sequence of L
# tokens costs about L * (ATTENTION_TOKENS + L) / ATTENTION_TOKENS token-equivalents (the
# linear layers ~ 24 h^2 L FLOPs, attention ~ 4 h L^2: their ratio at h = 4096-5120 puts the
# crossover near 24k tokens, the figure verl's sequence balancing weighs with too)
ATTENTION_TOKENS = 24_576


def workload(length: int, attention_tokens: int = ATTENTION_TOKENS) -> float:
    """A sequence's forward/backward cost in token-equivalents: its tokens plus attention's
    quadratic term (at 36k tokens a trajectory costs 2.5x its tokens)."""
    return length * (1.0 + length / attention_tokens)


@dataclass(frozen=True)
class UpdatePlan:
    """Which samples each data-parallel rank trains in each optimizer step.

    `minibatches[m][r]`: the samples rank r trains in mini-batch m. The composition is drawn
    once per step, before `forward_old`, so the old log-probs live on the rank that trains
    each sample, and it is kept across PPO epochs (no gather of old log-probs between ranks).
    """

    minibatches: list[list[list[int]]]

    def shard(self, rank: int) -> list[int]:
        """Every sample rank `rank` scores and trains, in index order."""
        return sorted(i for mb in self.minibatches for i in mb[rank])

    def busiest_over_mean(self, lengths: Sequence[int]) -> float:
        """The update's time over a perfectly even one: each optimizer step lasts as long as
        its busiest rank, so the sum over mini-batches of the busiest rank's workload over
        the sum of the mean rank's (1.0: no rank ever waits)."""
        busiest = mean = 0.0
        for mb in self.minibatches:
            loads = [sum(workload(lengths[i]) for i in part) for part in mb]
            busiest, mean = busiest + max(loads, default=0.0), mean + sum(loads) / max(len(loads), 1)
        return busiest / mean if mean else 1.0


def plan_update(lengths: Sequence[int], world: int, mini_batches: int,
                generator: torch.Generator | None = None) -> UpdatePlan:
    """Draw each optimizer step's mini-batch first (a random 1/mini_batches of the samples,
    as before), then balance each over the ranks by workload (`balanced_shards` on
    `workload`: tokens plus attention's quadratic term), so no rank holds a mini-batch's
    long tail while the others wait. Within a rank's part the samples keep the draw's
    order: on one rank the update is the one the per-mini-batch slicing gave."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    plans = []
    for mb in range(mini_batches):
        members = order[mb::mini_batches]
        parts = balanced_shards([workload(lengths[i]) for i in members], world)
        plans.append([[members[j] for j in part] for part in parts])
    return UpdatePlan(plans)


def whole_batch_shards(lengths: Sequence[int], world: int, mini_batches: int,
                       generator: torch.Generator | None = None) -> UpdatePlan:
    """The assignment before `plan_update`: the whole batch balanced over ranks by tokens,
    then each mini-batch a random slice intersected with every rank's fixed shard. Kept as
    the bench's baseline (scripts/bench_update.py): a mini-batch's busiest rank holds 1.5x
    the mean at 8 ranks and 4x at 64 on DeepSWE's length mix."""
    shards = balanced_shards(lengths, world)
    owner = {i: r for r, shard in enumerate(shards) for i in shard}
    order = torch.randperm(len(lengths), generator=generator).tolist()
    plans = []
    for mb in range(mini_batches):
        parts: list[list[int]] = [[] for _ in range(world)]
        for i in order[mb::mini_batches]:
            parts[owner[i]].append(i)
        plans.append(parts)
    return UpdatePlan(plans)


def update_lower_bound(lengths: Sequence[int], plan: UpdatePlan) -> float:
    """The best `busiest_over_mean` any assignment of the plan's mini-batches to ranks can
    reach: a mini-batch's busiest rank holds at least its mean and at least its longest
    sequence, which cannot be split (at 64 ranks and 64 sequences a mini-batch, one each)."""
    busiest = mean = 0.0
    for mb in plan.minibatches:
        loads = [workload(lengths[i]) for part in mb for i in part]
        if loads:
            even = sum(loads) / len(mb)
            busiest, mean = busiest + max(max(loads), even), mean + even
    return busiest / mean if mean else 1.0


def balanced_shards(lengths: Sequence[float], world: int) -> list[list[int]]:
    """Split sample indices over `world` data-parallel ranks by tokens, not by count.

    Longest first, each sample goes to the rank holding the fewest tokens so far (the
    lowest rank on a tie), so one rank does not get every long sample and gate the step.
    Greedy longest-first leaves the largest shard within the mean plus one sample of the
    smallest; each shard is returned in index order. Deterministic: every rank computes
    the same split from the same lengths.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1 (got {world})")
    shards: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        shards[r].append(i)
        load[r] += lengths[i]
    return [sorted(s) for s in shards]
