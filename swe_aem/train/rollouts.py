"""Where a training step's episodes come from: live agents on vLLM + Docker, or a replay.

Live: rank 0 runs the agents and grades their patches (swe_aem.agent.rollout_batch):
an episode or a grading that failed for infrastructure reasons is retried and
dropped with a record if it fails again: an infrastructure failure is never scored 0.
Fleet: the same on rollout replicas as Ray actors (swe_aem.fleet), when the config names
one (rollout.replicas > 1 or run.ray_address): `LiveRollouts(cfg, ...)` is then a FleetRollouts.
Replay: recorded trajectories (deterministic; for tests and re-training).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Self

from swe_aem.agent.episode import AgentConfig, step_seed
from swe_aem.agent.trajectory import Episode, read_episodes, write_episodes
from swe_aem.config import Config, RolloutConfig
from swe_aem.errors import SetupError
from swe_aem.jsonl import write_jsonl
from swe_aem.policy.models import ModelPreset
from swe_aem.train.metrics import timed

# swe_aem.eval.evaluate.write_rollout_report, given by the caller: training and evaluation are
# peers, and the held-out rows count exactly as `swe-aem eval` counts
HeldoutReport = Callable[..., dict[str, Path]]


class TrainingSetupError(SetupError, RuntimeError):
    """Something the run needs is missing (GPU, vLLM, Docker, model)."""


def agent_config(preset: ModelPreset, rollout: RolloutConfig) -> AgentConfig:
    """The agent settings of a run's episodes: every AgentConfig field that the `rollout`
    section also names, taken from it (a field passed by hand once went missing: max_turns,
    and episodes ran on to their timeout)."""
    shared = {f.name for f in dataclasses.fields(AgentConfig)} & {f.name for f in dataclasses.fields(rollout)}
    return AgentConfig.for_preset(preset, **{name: getattr(rollout, name) for name in shared})


def uses_fleet(cfg: Config) -> bool:
    """Whether a run's rollouts go through a rollout fleet on Ray (else rank 0's one server)."""
    return cfg.rollout.replicas > 1 or cfg.run.ray_address is not None


class LiveRollouts:
    """Agents on the policy server in sandboxes; graded in fresh containers of one grading pool.

    Both pools carry the run's id, but each removes only the containers it made, so
    concurrent graders never reap each other's; the run-id reaper runs at the end to
    clear anything a crash mid-step left behind. A config that names a rollout fleet
    gets a FleetRollouts (same interface) from this constructor.
    """

    def __new__(cls, cfg: Config, *args: Any, **kwargs: Any) -> Self:
        kind = FleetRollouts if cls is LiveRollouts and uses_fleet(cfg) else cls
        return super().__new__(kind)

    def __init__(self, cfg: Config, preset: ModelPreset, model_path: Path, tokenizer: Any,
                 run_dir: Path, run_id: str, report: HeldoutReport | None = None):
        from swe_aem.agent.harness import open_harness
        from swe_aem.policy.session import PolicySetupError
        from swe_aem.reward import grader
        from swe_aem.sandbox import SandboxConfig, reap
        from swe_aem.sandbox.image_store import ImageStore, parse_size

        self.cfg, self.run_dir, self.run_id, self.report = cfg, run_dir, run_id, report
        self.tokenizer = tokenizer
        self.agent_cfg = agent_config(preset, cfg.rollout)
        for host in cfg.run.docker_hosts or [None]:
            reap(docker_host=host)  # containers of crashed earlier runs (their owner is gone)
        with ExitStack() as stack:
            # one image store for both pools: pulls on demand (through run.registry), prefetches
            # the next step's images, keeps image disk under run.max_image_disk
            images = ImageStore(registry=cfg.run.registry, max_disk_bytes=parse_size(cfg.run.max_image_disk),
                                state_file=run_dir / "image_use.json")
            stack.callback(images.close)
            try:
                self.harness = stack.enter_context(open_harness(
                    model_path, preset, concurrency=cfg.rollout.concurrency, server_url=cfg.run.vllm_url,
                    log_path=run_dir / "vllm.log", weight_updates=cfg.run.push_weights,
                    docker_hosts=cfg.run.docker_hosts or None, images=images, run_id=run_id,
                    sandbox=SandboxConfig(cpus=cfg.run.sandbox_cpus, memory=cfg.run.sandbox_memory)))
            except PolicySetupError as exc:
                raise TrainingSetupError(str(exc)) from exc
            self._open = stack.pop_all()
        self.grade = grader(self.harness.grade_pool, timeout=cfg.run.grade_timeout_s)
        self.dropped_path = run_dir / "dropped_episodes.jsonl"
        self.dropped: list = []  # the last step's dropped samples

    def collect(self, instances: list, step: int) -> tuple[list[Episode], dict[str, float]]:
        self._wake()
        m: dict[str, float] = {}
        with timed(m, "rollout"):
            result = self._rollout(instances, self.cfg.rollout.samples_per_task, self.step_config(step), self.grade)
            self.record(step, result)
        return result.episodes, {**m, "episodes_dropped": float(len(result.dropped))}

    def step_config(self, step: int) -> AgentConfig:
        """The agent settings of step `step`'s episodes. Common random numbers: step k of any
        run with this seed samples with the same seeds, whenever its batch runs."""
        return dataclasses.replace(self.agent_cfg, seed=step_seed(self.cfg.trainer.seed, step))

    def record(self, step: int, result) -> None:
        """A step's batch on disk: its trajectories, and a record of each dropped sample."""
        self.dropped = result.dropped
        if result.dropped:
            write_jsonl(self.dropped_path, ({"step": step, **d.to_json()} for d in result.dropped),
                        append=True)
        (self.run_dir / "trajectories").mkdir(parents=True, exist_ok=True)
        write_episodes(self.run_dir / "trajectories" / f"step-{step:06d}.jsonl", result.episodes)

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
        result = self._rollout(
            instances, runs, dataclasses.replace(self.agent_cfg, temperature=temperature,
                                                 seed=self.cfg.trainer.seed),
            self._heldout_grade(), on_episode=lambda ep: write_episodes(traj, [ep], append=True))
        meta = {"dataset": self.cfg.heldout.dataset or self.cfg.run.dataset, "split": self.cfg.heldout.split,
                "max_turns": self.cfg.rollout.max_turns, "temperature": temperature}
        paths = self.report(out_dir, result, instances, runs, model_name=model_name, meta=meta,
                                     title=f"held-out: {model_name}")
        return json.loads(paths["json"].read_text())["summary"]

    def _heldout_grade(self):
        """An evaluation grades as the SWE-bench harness does (not strict about test edits)."""
        from swe_aem.reward import grader

        return grader(self.harness.grade_pool, timeout=self.cfg.run.grade_timeout_s, strict=False)

    def _rollout(self, instances: list, samples: int, config, grade, **kw):
        """Agents on the run's server and pool with the run's retries and concurrency: a
        training step's rollout and a held-out evaluation differ only in these arguments."""
        r = self.cfg.rollout
        return self.harness.rollout(instances, samples, tokenizer=self.tokenizer, config=config, grade=grade,
                                    max_retries=r.max_episode_retries, concurrency=r.concurrency,
                                    progress=True, **kw)

    def prefetch(self, instances: list) -> None:
        """Pull the images of the next step's tasks in the background."""
        self.harness.pool.prefetch(sorted({inst.image for inst in instances}))

    @property
    def pushes_weights(self) -> bool:
        return self.cfg.run.push_weights

    def push_weights(self, weights_dir: Path, version: int) -> float:
        """Load the trainer's weights between generations (none in flight meanwhile); turns
        sampled after it carry `version`. Seconds the load took."""
        return self.harness.run(self.harness.load_weights(weights_dir, version))

    def label_weights(self, version: int) -> None:
        """The served weights stand for `version` from now on (a step that changed none)."""
        self.harness.run(self.harness.load_weights(None, version))

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
        return self.harness.run(self.harness.client.score(token_ids))

    def probe_sample(self, prompt_ids: list[int], sampling):
        """One generation of the parity probe (swe_aem/train/parity.py): what the served
        policy samples, with the log-prob of each sampled token."""
        return self.harness.run(self.harness.client.generate(prompt_ids, sampling))

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
    at the same path on every node (a shared disk).
    """

    def __init__(self, cfg: Config, preset: ModelPreset, model_path: Path, tokenizer: Any,
                 run_dir: Path, run_id: str, report: HeldoutReport | None = None, *,
                 stand_in: Callable[..., Any] | None = None):
        from functools import partial

        from swe_aem.fleet import Fleet, FleetError, ReplicaSpec
        from swe_aem.reward import grader
        from swe_aem.sandbox import SandboxConfig

        self.cfg, self.run_dir, self.run_id, self.report = cfg, run_dir, run_id, report
        self.tokenizer = tokenizer
        self.agent_cfg = agent_config(preset, cfg.rollout)
        timeout = cfg.run.grade_timeout_s
        spec = ReplicaSpec(
            tokenizer_path=str(model_path), model_path=str(model_path), preset=preset,
            concurrency=cfg.rollout.concurrency, weight_updates=cfg.run.push_weights,
            docker_hosts=tuple(cfg.run.docker_hosts),
            sandbox=SandboxConfig(cpus=cfg.run.sandbox_cpus, memory=cfg.run.sandbox_memory),
            registry=cfg.run.registry, max_image_disk=cfg.run.max_image_disk,
            state_dir=str(run_dir / "fleet"), run_id=run_id, stand_in=stand_in,
            graders={"train": partial(grader, timeout=timeout),
                     "heldout": partial(grader, timeout=timeout, strict=False)})
        try:
            self.fleet = Fleet(spec, cfg.rollout.replicas, ray_address=cfg.run.ray_address,
                               tensor_parallel_size=cfg.vllm.tensor_parallel_size or preset.tensor_parallel_size)
        except FleetError as exc:
            raise TrainingSetupError(f"rollout fleet: {exc}") from exc
        self.grade = "train"  # graders live on the replicas, named
        self.dropped_path = run_dir / "dropped_episodes.jsonl"
        self.dropped: list = []

    def collect(self, instances: list, step: int) -> tuple[list[Episode], dict[str, float]]:
        episodes, timings = super().collect(instances, step)
        stats = self.fleet.stats
        timings.update(fleet_replica_deaths=float(stats.replica_deaths), fleet_reruns=float(stats.reruns),
                       fleet_replicas_used=float(len(stats.episodes)))
        return episodes, timings

    def _heldout_grade(self):
        return "heldout"

    def _rollout(self, instances: list, samples: int, config, grade, **kw):
        r = self.cfg.rollout
        return self.fleet.rollout(instances, samples, config=config, grader=grade,
                                  max_retries=r.max_episode_retries, allow_partial=r.allow_partial_batch,
                                  on_episode=kw.get("on_episode"))

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
        self.fleet.close()  # each replica stops its server and removes its run's containers


class ReplayRollouts:
    """Serve recorded episodes: step k gets every recorded sample of its tasks."""

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

    def collect(self, instances: list, step: int) -> tuple[list[Episode], dict[str, float]]:
        eps = [ep for inst in instances for ep in self.by_task[inst.instance_id]]
        return eps, {"time_rollout_s": 0.0, "episodes_dropped": 0.0}

    def close(self) -> None:
        pass
