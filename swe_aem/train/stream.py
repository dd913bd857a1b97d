"""Asynchronous bounded-staleness rollouts (rollout.max_staleness = k > 0).

When the trainer asks for step s's batch, steps < s are trained and their weights served,
so batches up to s + k may start: rollouts of later steps run on the harness's event loop
(in its own thread) while the trainer updates. Every turn records the version of the
weights that sampled it (PolicyClient.updating_weights: an update waits for the
generations in flight, so each turn has one version), and versions only grow, so step s
trains on no token older than version s - k. An episode running across an update carries
on, its later turns under the new weights; nothing is aborted or dropped for staleness.
The batches in flight share one set of episode slots, an older batch's episodes first, so
a long task keeps its place instead of being re-queued behind short ones.

Every graded episode is appended to the live source's buffer (rollout_buffer/) as it
finishes: a resumed run keeps the finished episodes of the batches it has not trained (those
its restored weights could have sampled) and runs only the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

from swe_aem.agent.rollout_batch import RolloutResult
from swe_aem.agent.trajectory import Episode
from swe_aem.train.metrics import timed
from swe_aem.train.rollouts import LiveRollouts, TrainingSetupError


class RolloutStream:
    """Rank 0's episodes for asynchronous training: the source interface, on top of a live
    source (one server or a fleet) whose loop it runs in a thread of its own. `batch_of(t)`
    gives step t's round-0 instances (a pure function of the step); `start` is the first
    step this process trains (the served weights are that step's). Round 0 of the next k
    steps is started ahead; a top-up round (dynamic sampling) runs when the trainer asks for
    it, beside the look-ahead, on the same episode slots."""

    def __init__(self, live: LiveRollouts, batch_of: Callable[[int], list], *, steps: int,
                 max_staleness: int, start: int):
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.live, self.batch_of, self.steps, self.k = live, batch_of, steps, max_staleness
        self.batches: dict[int, Future] = {}
        self.admitted = start - 1  # the last step whose round 0 has started
        live.start_background()
        self.slots = asyncio.run_coroutine_threadsafe(self._make_slots(), live.loop).result()

    async def _make_slots(self) -> asyncio.Semaphore:  # bound to the live source's loop
        return asyncio.Semaphore(self.live.cfg.rollout.concurrency)

    @property
    def buffer_dir(self) -> Path:
        return self.live.buffer.dir

    # ------------------------------------------------------------------ the trainer's calls
    def collect(self, instances: list, step: int, round: int = 0) -> tuple[list[Episode], dict[str, float]]:
        """Round `round` of step `step` (every graded episode, in the synchronous loop's
        order), starting the round-0 batches up to step + k first; the metrics say how long
        the trainer waited and how many batches were in flight."""
        m: dict[str, float] = {}
        with timed(m, "rollout"):
            if round == 0:
                if [i.instance_id for i in instances] != [i.instance_id for i in self.batch_of(step)]:
                    raise TrainingSetupError(f"step {step}: the trainer's batch is not the stream's")
                for t in range(self.admitted + 1, min(step + self.k, self.steps - 1) + 1):
                    self.batches[t] = self._submit(self.batch_of(t), t, 0)
                    self.admitted = t
                future = self.batches.pop(step)
            else:
                future = self._submit(instances, step, round)
            in_flight = sum(not f.done() for f in self.batches.values()) + (not future.done())
            result: RolloutResult = future.result()
            self.live.record(step, round, result)
        return result.episodes, {**m, "episodes_dropped": float(len(result.dropped)),
                                 "rollout_batches_in_flight": float(in_flight)}

    def _submit(self, instances: list, step: int, round: int) -> Future:
        return asyncio.run_coroutine_threadsafe(
            self.live.round_batch(instances, step, round, slots=self.slots), self.live.loop)

    def forget_before(self, step: int) -> None:
        self.live.forget_before(step)

    def push_weights(self, weights_dir: Path, version: int) -> float:
        return self.live.push_weights(weights_dir, version)

    def label_weights(self, version: int) -> None:
        self.live.label_weights(version)

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.live.probe_logprobs(token_ids)

    def probe_sample(self, prompt_ids: list[int], sampling):
        return self.live.probe_sample(prompt_ids, sampling)

    def evaluate(self, instances: list, **kw: Any) -> dict:
        return self.live.evaluate(instances, **kw)

    def prefetch(self, instances: list) -> None:
        self.live.prefetch(instances)

    @property
    def dropped(self) -> list:
        return self.live.dropped

    def release_gpus(self, probe_ids: list[int] | None) -> None:
        return None  # never asleep: asynchronous training needs the rollout GPUs of its own

    @property
    def pushes_weights(self) -> bool:
        return self.live.pushes_weights

    def close(self) -> None:
        for future in self.batches.values():
            future.cancel()
        for future in self.batches.values():  # closing anyway: a batch's failure is not news now
            with contextlib.suppress(CancelledError, TimeoutError, Exception):
                future.result(timeout=60)
        self.batches.clear()
        self.live.close()


def staleness_metrics(episodes: Sequence[Episode], step: int, bound: int | None) -> dict[str, float]:
    """The staleness of step `step`'s sampled tokens (the step minus the version of the
    weights that sampled them): max, token mean, and each value's share. Raises when a token
    exceeds `bound` (None: no bound), which the stream's admission rule rules out."""
    counts: dict[int, int] = {}
    for ep in episodes:
        for turn in ep.turns:
            counts[step - turn.policy_version] = counts.get(step - turn.policy_version, 0) + len(turn.response_ids)
    total = sum(counts.values())
    if not total:
        return {}
    worst = max(counts)
    if min(counts) < 0:
        raise TrainingSetupError(f"step {step}: tokens of weights version {step - min(counts)}, newer "
                                 "than the trainer's: the run's folder mixes two runs")
    if bound is not None and worst > bound:
        raise TrainingSetupError(f"step {step}: tokens {worst} versions stale, over rollout.max_staleness="
                                 f"{bound}")
    out = {"staleness_max": float(worst),
           "staleness_mean": sum(s * n for s, n in counts.items()) / total}
    out.update({f"staleness_{s}_share": n / total for s, n in sorted(counts.items())})
    return out
