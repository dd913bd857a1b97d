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

Every graded episode is appended to rollout_buffer/step-NNNNNN.jsonl as it finishes: a
resumed run keeps the finished episodes of the batches it has not trained (those its
restored weights could have sampled) and runs only the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from swe_aem.agent.rollout_batch import RolloutResult, rollout
from swe_aem.agent.trajectory import Episode, read_episodes, write_episodes
from swe_aem.train.metrics import timed
from swe_aem.train.rollouts import FleetRollouts, LiveRollouts, TrainingSetupError


def _versions(ep: Episode) -> list[int]:
    return [t.policy_version for t in ep.turns]


class RolloutStream:
    """Rank 0's episodes for asynchronous training: the interface of LiveRollouts, on top
    of one. `batch_of(t)` gives step t's instances (a pure function of the step); `start` is
    the first step this process trains (the served weights are that step's)."""

    def __init__(self, live: LiveRollouts, batch_of: Callable[[int], list], *, steps: int,
                 max_staleness: int, start: int, run_dir: Path):
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.live, self.batch_of, self.steps, self.k = live, batch_of, steps, max_staleness
        self.buffer_dir = Path(run_dir) / "rollout_buffer"
        self.buffer_dir.mkdir(parents=True, exist_ok=True)
        self.batches: dict[int, Future] = {}
        self.admitted = start - 1  # the last step whose batch has started
        self.resumed = self._read_buffers(start)
        if isinstance(live, FleetRollouts):  # the replicas hold the agents: a loop of our own
            self.fleet_thread = ThreadPoolExecutor(1, thread_name_prefix="fleet-batches")
            self.loop = asyncio.new_event_loop()
            self._loop_thread: threading.Thread | None = threading.Thread(
                target=self.loop.run_forever, name="stream-loop", daemon=True)
            self._loop_thread.start()
        else:  # the harness's loop, where the client's connections and the pools live
            live.harness.start_background()
            self.loop, self._loop_thread = live.harness.loop, None
        self.slots = asyncio.run_coroutine_threadsafe(self._make_slots(), self.loop).result()

    async def _make_slots(self) -> asyncio.Semaphore:  # bound to the harness's loop
        return asyncio.Semaphore(self.live.cfg.rollout.concurrency)

    # ------------------------------------------------------------------ the trainer's calls
    def collect(self, instances: list, step: int) -> tuple[list[Episode], dict[str, float]]:
        """Step `step`'s graded episodes (every one of its batch, in the synchronous loop's
        order), starting the batches up to step + k first; the metrics say how long the
        trainer waited and how many batches were in flight."""
        if [i.instance_id for i in instances] != [i.instance_id for i in self.batch_of(step)]:
            raise TrainingSetupError(f"step {step}: the trainer's batch is not the stream's")
        m: dict[str, float] = {}
        with timed(m, "rollout"):
            for t in range(self.admitted + 1, min(step + self.k, self.steps - 1) + 1):
                self.batches[t] = asyncio.run_coroutine_threadsafe(self._batch(t), self.loop)
                self.admitted = t
            in_flight = sum(not f.done() for f in self.batches.values())
            result: RolloutResult = self.batches.pop(step).result()
            self.live.record(step, result)
        return result.episodes, {**m, "episodes_dropped": float(len(result.dropped)),
                                 "rollout_batches_in_flight": float(in_flight)}

    def forget_before(self, step: int) -> None:
        """Drop the buffers of the batches a checkpoint now covers (steps < `step`)."""
        for path in self.buffer_dir.glob("step-*.jsonl"):
            if int(path.stem.removeprefix("step-")) < step:
                path.unlink(missing_ok=True)

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
        if self._loop_thread is not None:
            # nothing left pending on our loop when it stops ("Task was destroyed but it is pending!")
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self.loop).result(timeout=60)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._loop_thread.join()
            self.loop.close()
            self.fleet_thread.shutdown(wait=False)
        self.live.close()

    # ------------------------------------------------------------------ on the harness's loop
    async def _batch(self, t: int) -> RolloutResult:
        """Every episode of step t's batch not already in its buffer, graded; sample k of a
        task is seeded as in the synchronous loop, so a batch does not depend on when it ran."""
        live, instances = self.live, self.batch_of(t)
        r = live.cfg.rollout
        done = self.resumed.pop(t, [])
        have = {(e.instance_id, e.sample_index) for e in done}
        todo: dict[tuple[int, ...], list] = {}
        for inst in instances:
            missing = tuple(k for k in range(r.samples_per_task) if (inst.instance_id, k) not in have)
            if missing:
                todo.setdefault(missing, []).append(inst)
        config = live.step_config(t)
        buffer = self.buffer_dir / f"step-{t:06d}.jsonl"

        def keep(ep: Episode) -> None:
            write_episodes(buffer, [ep], append=True)

        if isinstance(live, FleetRollouts):  # the fleet's driver, one batch after another
            loop = asyncio.get_running_loop()
            results = [await loop.run_in_executor(self.fleet_thread, functools.partial(
                live.fleet.rollout, group, list(samples), config=config, grader=live.grade,
                max_retries=r.max_episode_retries, allow_partial=r.allow_partial_batch, on_episode=keep))
                for samples, group in todo.items()]
        else:
            results = await asyncio.gather(*(
                rollout(group, list(samples), policy=live.harness.client, tokenizer=live.tokenizer,
                        pool=live.harness.pool, config=config, grade=live.grade,
                        max_retries=r.max_episode_retries, concurrency=r.concurrency, progress=False,
                        on_episode=keep, slots=self.slots)
                for samples, group in todo.items()))
        order = {inst.instance_id: n for n, inst in reversed(list(enumerate(instances)))}
        episodes = sorted([*done, *(e for res in results for e in res.episodes)],
                          key=lambda e: (order[e.instance_id], e.sample_index))
        return RolloutResult(episodes, [d for res in results for d in res.dropped])

    def _read_buffers(self, start: int) -> dict[int, list[Episode]]:
        """Finished episodes of the batches not yet trained, that the restored weights (version
        `start`) or earlier ones within the bound sampled; the buffers of trained steps go."""
        kept: dict[int, list[Episode]] = {}
        for path in sorted(self.buffer_dir.glob("step-*.jsonl")):
            t = int(path.stem.removeprefix("step-"))
            if t < start:
                path.unlink()
                continue
            episodes = [ep for ep in read_episodes(path)
                        if all(t - self.k <= v <= start for v in _versions(ep))]
            path.write_text("")
            write_episodes(path, episodes)  # what the next kill would find
            kept[t] = episodes
        return kept


async def _cancel_the_rest() -> None:
    """Cancel every other task of the running loop and wait until they have ended."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


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
