"""What SFT learns from and in which order (pure: no I/O, no model).

An episode is trained on exactly as the trainer sees a rollout (`Episode.flatten`):
the same token ids, loss only where `loss_mask` is 1 (the tokens the policy wrote),
never on the prompt, the observations or the chat template's glue.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from swe_aem.agent.episode import step_seed
from swe_aem.agent.trajectory import Episode
from swe_aem.train.batch import Sample, pack_by_tokens


@dataclass(frozen=True)
class Selection:
    """The episodes kept for SFT and, for the ones left out, why."""

    kept: list[Episode]
    skipped: Counter  # reason -> count

    def summary(self) -> str:
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
        return f"{len(self.kept)} episodes kept" + (f"; skipped: {why}" if why else "")


def select_episodes(episodes: Sequence[Episode], min_reward: float | None = 1.0,
                    max_tokens: int | None = None) -> Selection:
    """Rejection sampling: keep graded episodes with reward >= min_reward (None keeps
    every episode, graded or not) that have sampled tokens and fit max_tokens."""
    kept: list[Episode] = []
    skipped: Counter = Counter()
    for ep in episodes:
        flat = ep.flatten()
        if min_reward is not None and ep.reward is None:
            skipped["ungraded"] += 1
        elif min_reward is not None and ep.reward < min_reward:
            skipped[f"reward below {min_reward:g}"] += 1
        elif not any(flat.loss_mask):
            skipped["no sampled tokens"] += 1
        elif max_tokens is not None and len(flat.input_ids) > max_tokens:
            skipped[f"longer than {max_tokens} tokens"] += 1
        else:
            kept.append(ep)
    return Selection(kept, skipped)


def sft_samples(episodes: Sequence[Episode]) -> list[Sample]:
    """Episodes -> trainer samples (one group each; reward is kept only as a record)."""
    out = []
    for i, ep in enumerate(episodes):
        flat = ep.flatten()
        if len(flat.input_ids) < 2:
            raise ValueError(f"episode {ep.instance_id}#{ep.sample_index} has fewer than 2 tokens")
        out.append(Sample(flat.input_ids, flat.loss_mask, flat.rollout_logprobs, flat.turn_index,
                          group=i, reward=float(ep.reward or 0.0), trainable=True))
    return out


def epoch_batches(num_samples: int, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    """The optimizer-step batches of one epoch: a seeded permutation cut into batches
    of batch_size (the last may be smaller); a pure function of (epoch, seed)."""
    if num_samples < 1:
        raise ValueError("no samples to batch")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(num_samples))
    random.Random(step_seed(seed, epoch)).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, num_samples, batch_size)]


def micro_batches(samples: Sequence[Sample], batch: Sequence[int], max_tokens: int) -> list[list[int]]:
    """One optimizer step's samples split into micro-batches that fit max_tokens (padded)."""
    packed = pack_by_tokens([len(samples[i].input_ids) for i in batch], max_tokens)
    return [[batch[j] for j in micro] for micro in packed]


def loss_tokens(samples: Sequence[Sample], batch: Sequence[int]) -> int:
    """Number of tokens that carry loss in a batch: the normaliser of its token mean."""
    return sum(sum(samples[i].loss_mask) for i in batch)


def masked_nll_sum(logprobs: Tensor, loss_mask: Tensor) -> Tensor:
    """Sum of -log p over the tokens with loss_mask 1; divided by the step's loss-token
    count this is the token-mean NLL, the same however the step is cut into micro-batches."""
    if logprobs.shape != loss_mask.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and loss_mask {tuple(loss_mask.shape)} differ")
    return -(logprobs * loss_mask.to(logprobs.dtype)).sum()


def masked_token_mean_nll(logprobs: Tensor, loss_mask: Tensor) -> Tensor:
    """Token-mean NLL over the masked tokens (a batch with no loss token is an error)."""
    count = loss_mask.sum()
    if float(count) == 0:
        raise ValueError("the batch has no token with loss_mask 1")
    return masked_nll_sum(logprobs, loss_mask) / count.to(logprobs.dtype)
