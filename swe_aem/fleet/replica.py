"""One rollout replica: a policy server and an agent harness on one node, run as a Ray actor.

A replica owns what `open_harness` sets up (the agents' sandbox pool and a grading pool on
its node's Docker daemon, and the policy: vLLM started on the GPUs Ray gave the actor, or a
stand-in server) and runs single episodes the driver hands it. The harness's event loop runs
in one thread that lives as long as the replica (it also started vLLM, whose process is tied
to the thread that started it); every Ray call hands its coroutine to that loop.

Every episode call carries the weights the driver wants (a version and a folder): a replica
that holds others (a fresh one after a restart, which starts from the base weights) loads
them first, so a restarted replica serves the current weights however its death was noticed.
A replica whose server stopped answering, or whose Docker daemon did, ends its own process,
so Ray restarts it and the driver runs its episodes again elsewhere: a dead server or daemon
is never a dropped episode. (A restart on a node whose daemon is still down fails in set-up:
Ray restarts it again after a longer back-off, and gives it up when its restarts are used
up; the others take its work. A first start that fails with a user-facing error is not
restarted: the driver gives the replica up at once with that error's message.)
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swe_aem.agent.rollout_batch import Dropped, rollout
from swe_aem.agent.settings import AgentConfig
from swe_aem.agent.trajectory import Episode
from swe_aem.errors import SweAemError
from swe_aem.policy.models import ModelPreset
from swe_aem.sandbox import SandboxConfig

# (version, folder): the weights a replica should serve (folder None: the base weights, under a
# later version label); None: the base weights it started with
Weights = tuple[int, str | None] | None


@dataclass(frozen=True)
class ReplicaSpec:
    """How every replica of a fleet is set up (picklable: it travels to the actors).

    `graders` maps a name to a factory grade_pool -> grade(instance, patch) (for example
    functools.partial(swe_aem.reward.grader, timeout=300)), built on the replica's own grading
    pool; an episode call names the one it is graded with. `stand_in(tokenizer, replica=i,
    restarted=bool)` returns a started server with `base_url` and `stop()` to roll out with
    instead of vLLM (ScriptedPolicyServer: tests and benches).
    """

    tokenizer_path: str
    model_path: str | None = None  # base weights vLLM starts from (unused with a stand-in)
    preset: ModelPreset | None = None
    concurrency: int = 4  # episodes in flight on one replica (its pools' and server's bound)
    weight_updates: bool = True
    served_name: str = "policy"
    docker_hosts: tuple[str, ...] = ()  # empty: the node's own daemon (DOCKER_HOST or the socket)
    sandbox: SandboxConfig | None = None
    registry: str | None = None
    max_image_disk: str | None = None
    state_dir: str | None = None  # per-replica vLLM logs and image-use files (node-local is fine)
    run_id: str = "fleet"  # replica i labels its containers RUN_ID-rI
    graders: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    stand_in: Callable[..., Any] | None = None
    # a restarted replica waits restart_backoff_s x 2^(its restarts - 1), at most
    # max_backoff_s, before it starts its server again: what killed it (the node short of
    # memory, a daemon down) gets time to pass, and restarts do not thrash the node
    restart_backoff_s: float = 5.0
    max_backoff_s: float = 60.0


def replica_run_id(run_id: str, index: int) -> str:
    return f"{run_id}-r{index}"


class RolloutReplica:
    """The actor class (the driver wraps it with ray.remote and its placement)."""

    def __init__(self, spec: ReplicaSpec, index: int):
        import ray

        ctx = ray.get_runtime_context()
        with warnings.catch_warnings():  # Ray's own property reads a deprecated one inside
            warnings.simplefilter("ignore")
            self.restarted = bool(ctx.was_current_actor_reconstructed)
        self.spec, self.index = spec, index
        self.node_id = ctx.get_node_id()
        self.run_id = replica_run_id(spec.run_id, index)
        self.backoff_s = self._back_off() if self.restarted else 0.0
        self.weights: Weights = None
        self.stand_in: Any = None
        self.harness: Any = None
        self.graders: dict[str, Any] = {}
        self.episodes_run = 0
        self._weights_lock = threading.Lock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._life = threading.Thread(target=self._live, name=f"replica-{index}", daemon=True)
        self._life.start()
        self._ready.wait()
        # a first start that fails with a user-facing error (no Docker daemon, a missing
        # model folder) is refused, not died: ready() raises it and the driver gives this
        # replica up at once with that message, since a restart would fail the same way. A
        # restart's set-up failure raises here, so Ray restarts again after the back-off (a
        # daemon that went down mid-run may be back by then).
        self.refusal: SweAemError | None = None
        if isinstance(self._error, SweAemError) and not self.restarted:
            self.refusal = self._error
        elif self._error is not None:
            raise self._error

    # ------------------------------------------------------------------ set-up
    def _back_off(self) -> float:
        """Sleep before a restart's set-up, longer with each restart of this replica (counted in
        a file of the node's state folder, or of the temporary one); the seconds slept."""
        import tempfile

        state = Path(self.spec.state_dir or tempfile.gettempdir())
        state.mkdir(parents=True, exist_ok=True)
        counter = state / f"restarts.{self.run_id}"
        n = int(counter.read_text() or 0) + 1 if counter.exists() else 1
        counter.write_text(str(n))
        wait = min(self.spec.restart_backoff_s * 2 ** (n - 1), self.spec.max_backoff_s)
        print(f"rollout replica {self.index}: restart {n}, waiting {wait:.0f} s first", file=sys.stderr, flush=True)
        time.sleep(wait)
        return wait

    def _live(self) -> None:
        """Open everything, serve the loop until close(), then close everything (one thread)."""
        from transformers import AutoTokenizer

        from swe_aem.agent.harness import open_harness
        from swe_aem.sandbox import reap

        spec = self.spec
        try:
            with ExitStack() as stack:
                hosts = list(spec.docker_hosts) or [None]
                if self.restarted:  # the containers the dead incarnation left on this node
                    for host in hosts:
                        reap(self.run_id, docker_host=host)
                self.tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer_path)
                url = None
                if spec.stand_in is not None:
                    self.stand_in = spec.stand_in(self.tokenizer, replica=self.index,
                                                  restarted=self.restarted)
                    stack.callback(self.stand_in.stop)
                    url = self.stand_in.base_url
                state = Path(spec.state_dir) if spec.state_dir else None
                if state is not None:
                    state.mkdir(parents=True, exist_ok=True)
                self.harness = stack.enter_context(open_harness(
                    spec.model_path, spec.preset, concurrency=spec.concurrency, server_url=url,
                    served_name=spec.served_name, weight_updates=spec.weight_updates,
                    log_path=state / f"vllm.replica-{self.index}.log" if state else None,
                    docker_hosts=list(spec.docker_hosts) or None, sandbox=spec.sandbox, run_id=self.run_id,
                    registry=spec.registry, max_image_disk=spec.max_image_disk,
                    image_state=state / f"image_use.replica-{self.index}.json" if state else None))
                self.graders = {name: make(self.harness.grade_pool) for name, make in spec.graders.items()}
                loop = self.harness.loop
                asyncio.set_event_loop(loop)
                self._ready.set()
                loop.run_forever()  # until close() stops it; then the stack closes the harness
                for host in hosts:
                    reap(self.run_id, docker_host=host)
        except BaseException as exc:  # noqa: BLE001 (raised from __init__ when set-up failed)
            self._error = exc
        finally:
            self._ready.set()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.harness.loop).result()

    # ------------------------------------------------------------------ calls
    def ready(self, weights: Weights = None) -> dict[str, Any]:
        """Serving `weights` (loaded if need be); where it runs. The driver's call after a restart.
        Raises the set-up's refusal (a user-facing error) when the first start failed with one."""
        if self.refusal is not None:
            raise self.refusal
        self._sync(weights)
        return self.info()

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "node_id": self.node_id, "pid": os.getpid(), "restarted": self.restarted,
                "weights": self.weights, "episodes_run": self.episodes_run,
                "weight_pushes": list(getattr(self.stand_in, "weight_pushes", []))}

    def run(self, instance: Any, sample_index: int, config: AgentConfig, weights: Weights,
            grader: str | None, max_retries: int) -> tuple[Episode | Dropped, str]:
        """One episode of `instance` (sample `sample_index`), graded by the named grader, on
        the weights the driver names; returns it (or its Dropped record) and this node's id."""
        self._sync(weights)
        grade = self.graders[grader] if grader is not None else None
        result = self._call(rollout([instance], [sample_index], policy=self.harness.client,
                                    tokenizer=self.tokenizer, pool=self.harness.pool, config=config,
                                    grade=grade, max_retries=max_retries, concurrency=1, progress=False))
        if result.dropped:
            why = result.dropped[0].reason
            if not self._server_alive():
                self._die(f"its policy server stopped answering ({why})")
            if not self._docker_alive():
                self._die(f"its Docker daemon stopped answering ({why})")
        self.episodes_run += 1
        return (result.episodes or result.dropped)[0], self.node_id

    def push(self, weights: tuple[int, str]) -> float:
        """Load `weights` into this replica's server (its policy session's push); seconds."""
        with self._weights_lock:
            return self._load(weights)

    def probe(self, token_ids: list[int]) -> list[float]:
        return self._call(self.harness.client.score(token_ids))

    def probe_sample(self, prompt_ids: list[int], sampling: Any) -> Any:
        return self._call(self.harness.client.generate(prompt_ids, sampling))

    def prefetch(self, images: list[str]) -> None:
        self.harness.pool.prefetch(images)

    def close(self) -> None:
        """Stop the loop; the life thread then closes the harness, the server and the containers."""
        if self.harness is not None and self._life.is_alive():
            self.harness.loop.call_soon_threadsafe(self.harness.loop.stop)
            self._life.join(timeout=120)

    # ------------------------------------------------------------------ weights, health
    def _sync(self, weights: Weights) -> None:
        """Serve `weights` if they are newer than the ones served: a call dispatched just
        before a push (another thread of the driver) must not load the older weights back."""
        if weights is None:
            return
        with self._weights_lock:
            if self.weights is None or weights[0] > self.weights[0]:
                self._load(weights)

    def _load(self, weights: tuple[int, str | None]) -> float:
        """Load the weights' folder (unless it is the one served: a new label only) between
        generations; later turns carry the weights' version."""
        version, folder = weights
        policy = self.harness.policy
        load = folder is not None and folder != (self.weights[1] if self.weights is not None else None)
        if load and (policy is None or not self.spec.weight_updates):
            raise RuntimeError(f"replica {self.index} cannot take weights (opened without weight updates)")
        seconds = self._call(self.harness.load_weights(folder if load else None, version))
        self.weights = weights
        return seconds

    def _server_alive(self) -> bool:
        import httpx

        policy = self.harness.policy
        if policy is not None and policy.server is not None and not policy.server.is_running():
            return False
        base = policy.base_url if policy is not None else self.harness.client.base_url
        try:
            return httpx.get(f"{base}/health", timeout=10.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _docker_alive(self) -> bool:
        """Whether any of the replica's daemons answers a ping now (a fresh connection)."""
        from swe_aem.sandbox import DockerUnavailableError, connect

        for host in list(self.spec.docker_hosts) or [None]:
            try:
                connect(host).close()
                return True
            except DockerUnavailableError:
                continue
        return False

    def _die(self, why: str) -> None:
        """End this process so Ray restarts the replica (the driver re-runs its episodes)."""
        print(f"rollout replica {self.index} on node {self.node_id[:8]}: {why}; exiting for a restart",
              file=sys.stderr, flush=True)
        time.sleep(0.2)  # let the line reach the driver's log
        os._exit(1)
