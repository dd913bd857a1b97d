"""Where a training step's episodes come from: one seam (`RolloutSource`), three sources.

Live: rank 0 runs the agents and grades their patches (swe_aem.agent.rollout_batch):
an episode or a grading that failed for infrastructure reasons is retried and
dropped with a record if it fails again: an infrastructure failure is never scored 0.
Fleet: the same on rollout replicas as Ray actors (swe_aem.fleet), when the config names
one (rollout.replicas > 1 or run.ray_address). Replay: recorded trajectories
(deterministic; for tests and re-training). swe_aem.train.sources.open_rollouts is the one
place that picks the live kind and, for asynchronous training, puts the stream's look-ahead
(swe_aem.train.stream) on it.

A step's rollout is asked for by round (`collect(instances, step, round)`): round 0 is the
step's batch, later rounds the top-up of dynamic sampling (rollout.max_sampling_rounds).
Every graded episode of a live round is kept on disk as it finishes (`RolloutBuffer`), so a
run killed and resumed reruns no episode its restored weights could have sampled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from swe_aem.agent.episode import step_seed
from swe_aem.agent.rollout_batch import RolloutResult, rollout
from swe_aem.agent.settings import AgentConfig
from swe_aem.agent.trajectory import Episode, read_episodes, write_episodes
from swe_aem.config import Config
from swe_aem.errors import SetupError
from swe_aem.jsonl import write_jsonl
from swe_aem.policy.models import ModelPreset
from swe_aem.train.metrics import timed

# swe_aem.eval.evaluate.write_rollout_report, given by the caller: training and evaluation are
# peers, and the held-out rows count exactly as `swe-aem eval` counts
HeldoutReport = Callable[..., dict[str, Path]]


class TrainingSetupError(SetupError, RuntimeError):
    """Something the run needs is missing (GPU, vLLM, Docker, model)."""


class RolloutSource(Protocol):
    """What the trainer asks of wherever its episodes come from (rank 0 only)."""

    pushes_weights: bool  # whether the source's server takes the trainer's weights
    dropped: Sequence[Any]  # the last round's dropped samples (swe_aem.agent.rollout_batch.Dropped)

    def collect(self, instances: list, step: int, round: int = 0) -> tuple[list[Episode], dict[str, float]]:
        """Round `round` of step `step`: every sample of `instances`, graded, ordered by
        (instance, sample), and the rollout's metrics."""

    def prefetch(self, instances: list) -> None:
        """Get ready for these tasks (their images) while the step trains."""

    def release_gpus(self, probe_ids: list[int] | None) -> list[float] | None:
        """Give the GPUs to the update (a colocated server's sleep); see LiveRollouts."""

    def forget_before(self, step: int) -> None:
        """The batches of steps < `step` are trained and checkpointed: drop what kept them."""

    def close(self) -> None: ...


class ServedPolicy(RolloutSource, Protocol):
    """A source that samples with a policy server the trainer feeds (live, fleet, stream)."""

    def push_weights(self, weights_dir: Path, version: int) -> float: ...

    def label_weights(self, version: int) -> None: ...

    def probe_logprobs(self, token_ids: list[int]) -> list[float]: ...

    def probe_sample(self, prompt_ids: list[int], sampling: Any) -> Any: ...

    def evaluate(self, instances: list, *, runs: int, temperature: float, out_dir: Path,
                 model_name: str) -> dict: ...


def uses_fleet(cfg: Config) -> bool:
    """Whether a run's rollouts go through a rollout fleet on Ray (else rank 0's one server)."""
    return cfg.rollout.replicas > 1 or cfg.run.ray_address is not None


def run_graders(cfg: Config) -> dict[str, Callable[[Any], Any]]:
    """The run's graders by name, each a factory of a grading callable on a grading pool: a
    local run and every fleet replica build theirs from these. "train": the reward (strict:
    a patch that edits the tests scores 0); "heldout": as the SWE-bench harness grades."""
    from swe_aem.reward import grader

    timeout = cfg.run.grade_timeout_s
    return {"train": partial(grader, timeout=timeout), "heldout": partial(grader, timeout=timeout, strict=False)}


class RolloutBuffer:
    """The graded episodes of a run's rounds not yet trained, appended as each finishes:
    rollout_buffer/step-NNNNNN.jsonl (round 0), step-NNNNNN.round-R.jsonl (top-up rounds).

    Opened at a (re)start, it keeps the episodes a resumed run may train: those of steps
    >= `start` whose every turn was sampled by weights within the staleness bound and no
    newer than the restored ones (version `start`); the rest is deleted. The synchronous
    loop (bound 0) so keeps only a step's own version; a step whose checkpoint came later
    than its batch has nothing kept.
    """

    def __init__(self, run_dir: Path, start: int, max_staleness: int):
        self.dir = Path(run_dir) / "rollout_buffer"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.resumed: dict[tuple[int, int], list[Episode]] = {}
        for path in sorted(self.dir.glob("step-*.jsonl")):
            step, round = _buffer_key(path)
            if step < start:
                path.unlink()
                continue
            kept = [ep for ep in read_episodes(path)
                    if all(step - max_staleness <= t.policy_version <= start for t in ep.turns)]
            path.write_text("")
            write_episodes(path, kept)  # what the next kill would find
            self.resumed[(step, round)] = kept

    def path(self, step: int, round: int) -> Path:
        return self.dir / (f"step-{step:06d}.jsonl" if round == 0 else f"step-{step:06d}.round-{round}.jsonl")

    def take(self, step: int, round: int) -> list[Episode]:
        """The episodes of (step, round) kept from before the restart (once)."""
        return self.resumed.pop((step, round), [])

    def keeper(self, step: int, round: int) -> Callable[[Episode], None]:
        path = self.path(step, round)
        return lambda ep: write_episodes(path, [ep], append=True)

    def forget_before(self, step: int) -> None:
        for path in self.dir.glob("step-*.jsonl"):
            if _buffer_key(path)[0] < step:
                path.unlink(missing_ok=True)


def _buffer_key(path: Path) -> tuple[int, int]:
    """(step, round) of a buffer file's name."""
    stem, _, round = path.name.removesuffix(".jsonl").partition(".round-")
    return int(stem.removeprefix("step-")), int(round or 0)


def missing_samples(instances: Sequence[Any], samples: int, done: Iterable[Episode]) -> dict[tuple[int, ...], list]:
    """The samples of a round still to run, by the sample indices each instance lacks
    (instances lacking the same ones run together). Pure."""
    have = {(e.instance_id, e.sample_index) for e in done}
    todo: dict[tuple[int, ...], list] = {}
    for inst in instances:
        missing = tuple(k for k in range(samples) if (inst.instance_id, k) not in have)
        if missing:
            todo.setdefault(missing, []).append(inst)
    return todo


def merged(instances: Sequence[Any], done: list[Episode], results: Sequence[RolloutResult]) -> RolloutResult:
    """A round's episodes kept and newly run, in the instances' order, then by sample."""
    order = {inst.instance_id: n for n, inst in reversed(list(enumerate(instances)))}
    episodes = sorted([*done, *(e for res in results for e in res.episodes)],
                      key=lambda e: (order[e.instance_id], e.sample_index))
    return RolloutResult(episodes, [d for res in results for d in res.dropped])


class LiveRollouts:
    """Agents on the policy server in sandboxes; graded in fresh containers of one grading pool.

    Both pools carry the run's id, but each removes only the containers it made, so
    concurrent graders never reap each other's; the run-id reaper runs at the end to
    clear anything a crash mid-step left behind. `batch` is the one coroutine every round
    runs through (its own loop here; the stream's look-ahead submits it to the same loop).
    """

    def __init__(self, cfg: Config, preset: ModelPreset, model_path: Path, tokenizer: Any,
                 run_dir: Path, run_id: str, report: HeldoutReport | None = None, *, start: int = 0):
        from swe_aem.agent.harness import open_harness
        from swe_aem.policy.session import PolicySetupError
        from swe_aem.sandbox import SandboxConfig, reap

        self._common(cfg, preset, tokenizer, run_dir, run_id, report, start)
        for host in cfg.run.docker_hosts or [None]:
            reap(docker_host=host)  # containers of crashed earlier runs (their owner is gone)
        with ExitStack() as stack:
            try:
                # one image store for both pools: pulls on demand (through run.registry), prefetches
                # the next step's images, keeps image disk under run.max_image_disk
                self.harness = stack.enter_context(open_harness(
                    model_path, preset, concurrency=cfg.rollout.concurrency, server_url=cfg.run.vllm_url,
                    log_path=run_dir / "vllm.log", weight_updates=cfg.run.push_weights,
                    docker_hosts=cfg.run.docker_hosts or None, run_id=run_id,
                    sandbox=SandboxConfig(cpus=cfg.run.sandbox_cpus, memory=cfg.run.sandbox_memory),
                    registry=cfg.run.registry, max_image_disk=cfg.run.max_image_disk,
                    image_state=run_dir / "image_use.json"))
            except PolicySetupError as exc:
                raise TrainingSetupError(str(exc)) from exc
            self._open = stack.pop_all()
        self.graders = {name: make(self.harness.grade_pool) for name, make in run_graders(cfg).items()}

    def _common(self, cfg: Config, preset: ModelPreset, tokenizer: Any, run_dir: Path, run_id: str,
                report: HeldoutReport | None, start: int) -> None:
        self.cfg, self.run_dir, self.run_id, self.report = cfg, Path(run_dir), run_id, report
        self.tokenizer = tokenizer
        self.agent_cfg = cfg.rollout.agent.for_model(preset)
        self.buffer = RolloutBuffer(self.run_dir, start, cfg.rollout.max_staleness or 0)
        self.dropped_path = self.run_dir / "dropped_episodes.jsonl"
        self.dropped: list = []  # the last round's dropped samples

    # ------------------------------------------------------------------ the loop it runs on
    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.harness.loop

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the source's loop and wait for its result."""
        return self.harness.run(coro)

    def start_background(self) -> None:
        """Run the loop in a thread of its own, for work submitted while the trainer trains."""
        self.harness.start_background()

    async def batch(self, instances: list, samples: int | Sequence[int], config: AgentConfig, grader: str, *,
                    on_episode: Callable[[Episode], None] | None = None,
                    slots: asyncio.Semaphore | None = None, progress: bool = False) -> RolloutResult:
        """`samples` episodes (or these sample indices) of every instance, graded by the run's
        grader `grader` (`run_graders`), with the run's retries and concurrency; `slots`:
        episode slots shared with batches running beside this one. A training round and a
        held-out evaluation differ only in these arguments."""
        r = self.cfg.rollout
        return await rollout(instances, samples, policy=self.harness.client, tokenizer=self.tokenizer,
                             pool=self.harness.pool, config=config, grade=self.graders[grader],
                             max_retries=r.max_episode_retries, concurrency=r.concurrency, progress=progress,
                             on_episode=on_episode, slots=slots)

    async def round_batch(self, instances: list, step: int, round: int, *,
                          slots: asyncio.Semaphore | None = None, progress: bool = False) -> RolloutResult:
        """Every sample of round `round` of step `step` not already in the buffer, graded
        and buffered as each finishes; sample k of a task is seeded as anywhere else, so a
        round does not depend on when (or in which process) it ran."""
        done = self.buffer.take(step, round)
        keep, config = self.buffer.keeper(step, round), self.step_config(step)
        results = await asyncio.gather(*(
            self.batch(group, list(samples), config, "train", on_episode=keep, slots=slots, progress=progress)
            for samples, group in missing_samples(instances, self.cfg.rollout.samples_per_task, done).items()))
        return merged(instances, done, results)

    # ------------------------------------------------------------------ the trainer's calls
    def collect(self, instances: list, step: int, round: int = 0) -> tuple[list[Episode], dict[str, float]]:
        self._wake()
        m: dict[str, float] = {}
        with timed(m, "rollout"):
            result = self.run(self.round_batch(instances, step, round, progress=True))
            self.record(step, round, result)
        return result.episodes, {**m, "episodes_dropped": float(len(result.dropped))}

    def step_config(self, step: int) -> AgentConfig:
        """The agent settings of step `step`'s episodes. Common random numbers: step k of any
        run with this seed samples with the same seeds, whenever its batch runs."""
        return dataclasses.replace(self.agent_cfg, seed=step_seed(self.cfg.trainer.seed, step))

    def record(self, step: int, round: int, result: RolloutResult) -> None:
        """A round's episodes on disk (trajectories/step-N.jsonl holds every round of step N,
        round 0 first), and a record of each dropped sample."""
        self.dropped = result.dropped
        if result.dropped:
            write_jsonl(self.dropped_path, ({"step": step, "round": round, **d.to_json()} for d in result.dropped),
                        append=True)
        (self.run_dir / "trajectories").mkdir(parents=True, exist_ok=True)
        write_episodes(self.run_dir / "trajectories" / f"step-{step:06d}.jsonl", result.episodes,
                       append=round > 0)

    def forget_before(self, step: int) -> None:
        self.buffer.forget_before(step)

    def evaluate(self, instances: list, *, runs: int, temperature: float, out_dir: Path,
                 model_name: str) -> dict:
        """Resolve rate of the server's current weights on `instances`: the eval report of
        `swe-aem eval` (official grading, lost samples excluded, not scored 0), written to
        out_dir; returns its summary. Uses the run's server and pools (no second model)."""
        if self.report is None:
            raise TrainingSetupError("a held-out evaluation (heldout.split) needs the report writer of "
                                     "swe-aem eval: Trainer(..., heldout_report=write_rollout_report)")
        self._wake()
        out_dir.mkdir(parents=True, exist_ok=True)
        traj = out_dir / "trajectories.jsonl"
        traj.write_text("")
        config = dataclasses.replace(self.agent_cfg, temperature=temperature, seed=self.cfg.trainer.seed)
        result = self.run(self.batch(instances, runs, config, "heldout", progress=True,
                                     on_episode=lambda ep: write_episodes(traj, [ep], append=True)))
        meta = {"dataset": self.cfg.heldout.dataset or self.cfg.run.dataset, "split": self.cfg.heldout.split,
                "max_turns": self.agent_cfg.max_turns, "temperature": temperature}
        paths = self.report(out_dir, result, instances, runs, model_name=model_name, meta=meta,
                            title=f"held-out: {model_name}")
        return json.loads(paths["json"].read_text())["summary"]

    def prefetch(self, instances: list) -> None:
        """Pull the images of the next step's tasks in the background."""
        self.harness.pool.prefetch(sorted({inst.image for inst in instances}))

    @property
    def pushes_weights(self) -> bool:
        return self.cfg.run.push_weights

    def push_weights(self, weights_dir: Path, version: int) -> float:
        """Load the trainer's weights between generations (none in flight meanwhile); turns
        sampled after it carry `version`. Seconds the load took."""
        return self.run(self.harness.load_weights(weights_dir, version))

    def label_weights(self, version: int) -> None:
        """The served weights stand for `version` from now on (a step that changed none)."""
        self.run(self.harness.load_weights(None, version))

    def release_gpus(self, probe_ids: list[int] | None) -> list[float] | None:
        """Before the trainer's forward on GPUs it shares with vLLM: the probe's log-probs
        under the weights that rolled out (when `probe_ids`: a push will compare with them),
        then POST /sleep?level=1. None, and nothing done, for a server that does not sleep."""
        policy = self._session()
        if policy is None or not policy.sleeps:
            return None
        before = self.probe_logprobs(probe_ids) if probe_ids else None
        policy.sleep()
        return before

    def _wake(self) -> None:
        """Generating again after a sleep that no push ended (a step that trained nothing)."""
        policy = self._session()
        if policy is not None:
            policy.wake()

    def _session(self):
        """This rank's own policy session: None with a stand-in's client, or on a fleet (its
        replicas own their servers, on GPUs of their own)."""
        harness = getattr(self, "harness", None)
        return getattr(harness, "policy", None)

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.run(self.harness.client.score(token_ids))

    def probe_sample(self, prompt_ids: list[int], sampling):
        """One generation of the parity probe (swe_aem/train/parity.py): what the served
        policy samples, with the log-prob of each sampled token."""
        return self.run(self.harness.client.generate(prompt_ids, sampling))

    def close(self) -> None:
        from swe_aem.sandbox import reap

        self._open.close()
        for host in self.cfg.run.docker_hosts or [None]:
            reap(self.run_id, docker_host=host)  # whatever a crash mid-step left behind


class FleetRollouts(LiveRollouts):
    """LiveRollouts on a rollout fleet (swe_aem.fleet): `rollout.replicas` replicas as Ray
    actors on the cluster at `run.ray_address` (None: a local Ray), each a vLLM server on its
    placement group's GPUs (`tensor_parallel_size` of them) with sandbox and grading pools on
    its node's Docker daemon. Rank 0 drives them: each episode runs on one replica, every
    weight push reaches every replica, a replica that dies is restarted with the current
    weights and its episodes run again; a step fails rather than go on with a partial batch
    unless rollout.allow_partial_batch. The model folder and the pushed weights must be seen
    at the same path on every node (a shared disk). The driver's blocking calls run one at a
    time in a thread of its own, under a loop of this source's own.
    """

    def __init__(self, cfg: Config, preset: ModelPreset, model_path: Path, tokenizer: Any,
                 run_dir: Path, run_id: str, report: HeldoutReport | None = None, *, start: int = 0,
                 stand_in: Callable[..., Any] | None = None):
        from swe_aem.fleet import Fleet, FleetError, ReplicaSpec
        from swe_aem.sandbox import SandboxConfig

        self._common(cfg, preset, tokenizer, run_dir, run_id, report, start)
        spec = ReplicaSpec(
            tokenizer_path=str(model_path), model_path=str(model_path), preset=preset,
            concurrency=cfg.rollout.concurrency, weight_updates=cfg.run.push_weights,
            docker_hosts=tuple(cfg.run.docker_hosts),
            sandbox=SandboxConfig(cpus=cfg.run.sandbox_cpus, memory=cfg.run.sandbox_memory),
            registry=cfg.run.registry, max_image_disk=cfg.run.max_image_disk,
            state_dir=str(self.run_dir / "fleet"), run_id=run_id, stand_in=stand_in, graders=run_graders(cfg))
        try:
            self.fleet = Fleet(spec, cfg.rollout.replicas, ray_address=cfg.run.ray_address,
                               tensor_parallel_size=cfg.vllm.tensor_parallel_size or preset.tensor_parallel_size)
        except FleetError as exc:
            raise TrainingSetupError(f"rollout fleet: {exc}") from exc
        self._loop = asyncio.new_event_loop()
        self._loop_thread: threading.Thread | None = None
        self._driver = ThreadPoolExecutor(1, thread_name_prefix="fleet-driver")

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def run(self, coro: Any) -> Any:
        if self._loop_thread is not None:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        return self._loop.run_until_complete(coro)

    def start_background(self) -> None:
        if self._loop_thread is None:
            self._loop_thread = threading.Thread(target=self._loop.run_forever, name="fleet-loop", daemon=True)
            self._loop_thread.start()

    async def batch(self, instances: list, samples: int | Sequence[int], config: AgentConfig, grader: str, *,
                    on_episode: Callable[[Episode], None] | None = None,
                    slots: asyncio.Semaphore | None = None, progress: bool = False) -> RolloutResult:
        """The same batch over the replicas (each grades with its own copy of the named grader) (each replica's concurrency is its own: `slots`
        and `progress` do not apply)."""
        r = self.cfg.rollout
        return await self._loop.run_in_executor(self._driver, partial(
            self.fleet.rollout, instances, samples, config=config, grader=grader,
            max_retries=r.max_episode_retries, allow_partial=r.allow_partial_batch, on_episode=on_episode))

    def collect(self, instances: list, step: int, round: int = 0) -> tuple[list[Episode], dict[str, float]]:
        episodes, timings = super().collect(instances, step, round)
        stats = self.fleet.stats
        timings.update(fleet_replica_deaths=float(stats.replica_deaths), fleet_reruns=float(stats.reruns),
                       fleet_replicas_used=float(len(stats.episodes)))
        return episodes, timings

    def prefetch(self, instances: list) -> None:
        self.fleet.prefetch(instances)

    def push_weights(self, weights_dir: Path, version: int) -> float:
        return self.fleet.push_weights(str(weights_dir), version)

    def label_weights(self, version: int) -> None:
        self.fleet.label_weights(version)

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.fleet.probe(token_ids)

    def probe_sample(self, prompt_ids: list[int], sampling):
        return self.fleet.probe_sample(prompt_ids, sampling)

    def close(self) -> None:
        if self._loop_thread is not None:
            # nothing left pending on the loop when it stops ("Task was destroyed but it is pending!")
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self._loop).result(timeout=60)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join()
            self._loop_thread = None
        self._loop.close()
        self._driver.shutdown(wait=False)
        self.fleet.close()  # each replica stops its server and removes its run's containers


async def _cancel_the_rest() -> None:
    """Cancel every other task of the running loop and wait until they have ended."""
    rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


class ReplayRollouts:
    """Serve recorded episodes: any round of any step gets every recorded sample of its
    tasks (the top-up of dynamic sampling included: a round names other tasks)."""

    def __init__(self, path: Path):
        self.by_task: dict[str, list[Episode]] = defaultdict(list)
        for ep in read_episodes(path):
            self.by_task[ep.instance_id].append(ep)
        if not self.by_task:
            raise TrainingSetupError(f"replay file {path} holds no episodes")

    @property
    def task_ids(self) -> list[str]:
        return sorted(self.by_task)

    pushes_weights = False
    dropped: tuple = ()  # recorded episodes are never dropped

    def release_gpus(self, probe_ids: list[int] | None) -> None:
        return None

    def prefetch(self, instances: list) -> None:
        pass

    def forget_before(self, step: int) -> None:
        pass

    def collect(self, instances: list, step: int, round: int = 0) -> tuple[list[Episode], dict[str, float]]:
        eps = [ep for inst in instances for ep in self.by_task[inst.instance_id]]
        return eps, {"time_rollout_s": 0.0, "episodes_dropped": 0.0}

    def close(self) -> None:
        pass
