"""Rollouts: every instance G times, concurrently over the sandbox pool and the server.

`rollout(...)` is the one entry the trainer, `swe-aem rollout` and `swe-aem eval`
use, each with its own client, pool and grading callable. An infrastructure
failure is never a reward: an episode whose container or server failed is run
again, a patch whose grading failed (timeout, dead container, daemon down) is
graded again, and a sample that still fails after the retries is dropped with a
record of why, not scored 0. The agent's own damage is a 0: an episode whose own
command made its sandbox unusable (termination `sandbox_broken`, decided by
swe_aem.sandbox.classify_breakage) is not rerun and not graded (its container is
dead or cannot run git; its patch is empty), it gets reward 0 with grade_status
`sandbox_broken` and is trained on like any other 0.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol

from tqdm import tqdm

from swe_aem.agent.episode import in_thread, run_episode
from swe_aem.agent.settings import AgentConfig
from swe_aem.agent.trajectory import Episode, grade_tests_of
from swe_aem.policy.client import PolicyClient
from swe_aem.sandbox import SandboxError
from swe_aem.sandbox.setup_script import prepare


class Verdict(Protocol):
    """What a grader returns (swe_aem.reward.GradeResult has these)."""

    reward: float
    status: str
    reason: str

    @property
    def infra_failure(self) -> bool: ...


# grade(instance, patch) -> Verdict; blocking (runs in the rollout's thread pool)
Grader = Callable[[Any, str], Verdict]


@dataclass(frozen=True)
class Dropped:
    """A sample given up on after its retries; never a reward."""

    instance_id: str
    sample_index: int
    attempts: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RolloutResult:
    episodes: list[Episode]  # ordered by (instance, sample); graded when a grader was given
    dropped: list[Dropped] = field(default_factory=list)


async def rollout(
    instances: Sequence[Any],
    samples: int | Sequence[int],
    *,
    policy: PolicyClient,
    tokenizer: Any,
    pool: Any,
    config: AgentConfig,
    grade: Grader | None = None,
    max_retries: int = 1,
    concurrency: int = 4,
    progress: bool = True,
    on_episode: Callable[[Episode], None] | None = None,
    slots: asyncio.Semaphore | None = None,
) -> RolloutResult:
    """Run `samples` episodes per instance (sample k has sample_index k) and grade each;
    `samples` may instead list the sample indices to run (a rollout fleet runs one sample of
    a task on one replica, with the seed that sample has anywhere).

    Sandbox and grading calls are blocking (docker SDK) and run in a thread pool sized
    to the concurrency. `on_episode` sees every kept episode as it is done. `slots`: episode
    slots shared with rollouts running beside this one (asynchronous training's batches of
    several steps; waiters are served first come, so an older batch's episodes go first);
    None: `concurrency` slots of its own.
    """
    executor = ThreadPoolExecutor(max_workers=2 * concurrency + 2, thread_name_prefix="rollout")
    semaphore = slots if slots is not None else asyncio.Semaphore(concurrency)
    indices = range(samples) if isinstance(samples, int) else samples
    jobs = [(inst, k) for inst in instances for k in indices]
    bar = tqdm(total=len(jobs), desc="rollout", unit="ep", disable=not progress)
    counts = {"resolved": 0, "dropped": 0}

    async def one(instance: Any, k: int) -> Episode | Dropped:
        episode: Episode | None = None
        failure = ""
        for attempt in range(1, max_retries + 2):
            if episode is None:
                async with semaphore:
                    episode = await _episode_in_sandbox(instance, k, policy, tokenizer, pool, config,
                                                        executor)
                if episode.termination == "error":
                    failure, episode = f"episode error: {episode.error}", None
                    continue
            if grade is None:
                break
            if episode.termination == "sandbox_broken":
                _grade_broken(episode)
                break
            failure = await _grade(grade, instance, episode, executor)
            if not failure:
                break
        else:
            counts["dropped"] += 1
            bar.update(1)
            bar.set_postfix(counts)
            return Dropped(instance.instance_id, k, max_retries + 1, failure)
        counts["resolved"] += int(episode.reward == 1.0)
        if on_episode is not None:
            on_episode(episode)
        bar.update(1)
        bar.set_postfix(counts, last=episode.termination)
        return episode

    try:
        results = await asyncio.gather(*(one(inst, k) for inst, k in jobs))
    finally:
        bar.close()
        executor.shutdown(wait=False)
    return RolloutResult([r for r in results if isinstance(r, Episode)],
                         [r for r in results if isinstance(r, Dropped)])


async def _episode_in_sandbox(
    instance: Any, k: int, policy: PolicyClient, tokenizer: Any, pool: Any, config: AgentConfig,
    executor: Executor,
) -> Episode:
    start = time.monotonic()
    manager = pool.sandbox(instance)
    try:
        sandbox = await in_thread(executor, manager.__enter__)
    except Exception as exc:  # noqa: BLE001 (any start failure is recorded on the episode)
        return Episode(instance.instance_id, k, termination="error", model=policy.model,
                       error=f"sandbox did not start: {type(exc).__name__}: {exc}",
                       wall_s=time.monotonic() - start)
    try:
        if getattr(instance, "setup_script", ""):  # SWE-smith / R2E-Gym: make the task state first
            try:
                await in_thread(executor, partial(prepare, sandbox, instance))
            except SandboxError as exc:
                return Episode(instance.instance_id, k, termination="error", model=policy.model,
                               error=f"sandbox set-up failed: {exc}", wall_s=time.monotonic() - start)
        return await run_episode(instance, sandbox, policy, tokenizer, config, sample_index=k,
                                 executor=executor)
    finally:
        await in_thread(executor, manager.__exit__, None, None, None)


def _grade_broken(episode: Episode) -> None:
    """Reward 0 for an episode whose own command broke its sandbox; the grader is not run (the
    patch of a dead container is empty, and a fresh container would grade the base commit)."""
    episode.reward = 0.0
    episode.grade_status = "sandbox_broken"
    episode.grade_reason = f"not graded: {episode.error or 'the sandbox was broken by its own command'}"


async def _grade(grade: Grader, instance: Any, episode: Episode, executor: Executor) -> str:
    """Grade the episode's patch onto it; '' when graded, else why grading failed."""
    try:
        verdict = await in_thread(executor, partial(grade, instance, episode.patch))
    except Exception as exc:  # noqa: BLE001 (a daemon that is down, a grader bug: retried, then dropped)
        return f"grading error: {type(exc).__name__}: {exc}"
    if verdict.infra_failure:
        return f"grading {verdict.status}: {verdict.reason}"
    episode.reward = float(verdict.reward)
    episode.grade_status = str(verdict.status)
    episode.grade_reason = str(verdict.reason)
    episode.grade_tests = grade_tests_of(getattr(verdict, "report", None))  # per test, for a viewer
    return ""
