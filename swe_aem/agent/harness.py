"""The set-up every rollout shares: a sandbox pool for the agents, a grading pool under
the same run id, and the policy server (started or attached), on one event loop.

`swe-aem rollout`, `swe-aem eval`, the trainer's live rollouts and the SFT demonstrations
all open one of these; they differ only in the agent config and the grader they pass
(swe_aem.reward.grader on the harness's grading pool: the agent never imports grading).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from swe_aem.agent.rollout_batch import RolloutResult, rollout
from swe_aem.agent.settings import AgentConfig
from swe_aem.policy.client import PolicyClient
from swe_aem.policy.models import ModelPreset
from swe_aem.sandbox import SandboxConfig, SandboxPool
from swe_aem.sandbox.image_store import ImageStore, parse_size

if TYPE_CHECKING:
    from swe_aem.policy.session import PolicySession


@dataclass
class Harness:
    """Both pools share the run id (the reaper's handle) and one image store, but each removes
    only its own containers, so graders never reap the agents' sandboxes or each other's."""

    pool: SandboxPool
    grade_pool: SandboxPool
    client: PolicyClient
    policy: PolicySession | None = None  # when the harness opened the server (push_weights lives there)
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None  # the loop's own thread, once start_background ran

    def rollout(self, instances: Sequence[Any], samples: int, *, tokenizer: Any, config: AgentConfig,
                grade: Callable | None, max_retries: int = 1, concurrency: int = 4,
                **kw: Any) -> RolloutResult:
        """`samples` episodes of every instance on the harness's server and pool, graded by `grade`."""
        return self.run(rollout(
            instances, samples, policy=self.client, tokenizer=tokenizer, pool=self.pool, config=config,
            grade=grade, max_retries=max_retries, concurrency=concurrency, **kw))

    def run(self, coro: Any) -> Any:
        """Run a coroutine that uses the client on the harness's loop (where its connections
        live) and wait for its result, whether the loop runs here or in its own thread."""
        if self._thread is not None:
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()
        return self.loop.run_until_complete(coro)

    async def load_weights(self, weights_dir: str | Path | Any | None, version: int) -> float:
        """Load `weights_dir` into the harness's server between generations (none in flight
        meanwhile; None: load nothing) and label later generations `version`; seconds taken.
        The one way rollout sources and fleet replicas change what the server serves."""
        async with self.client.updating_weights(version):
            if weights_dir is None:
                return 0.0
            return await asyncio.get_running_loop().run_in_executor(None, self.policy.push_weights, weights_dir)

    def start_background(self) -> None:
        """Run the loop in a thread of its own from now on, so that work submitted to it
        (asynchronous training's rollouts of later steps) goes on while the caller trains."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.loop.run_forever, name="harness-loop", daemon=True)
            self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
            self._thread = None
        if not self.loop.is_closed():
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()


@contextmanager
def open_harness(model_path: str | Path | None, preset: ModelPreset | None, *, concurrency: int,
                 server_url: str | None = None, served_name: str = "policy", log_path: Path | None = None,
                 weight_updates: bool = False, client: PolicyClient | None = None,
                 docker_hosts: list[str] | None = None, sandbox: SandboxConfig | None = None,
                 registry: str | None = None, max_image_disk: str | None = None,
                 image_state: Path | None = None, run_id: str | None = None) -> Iterator[Harness]:
    """Pools first (a dead daemon fails before any model work), then the policy: `client` as
    given (a stand-in server), else vLLM attached at `server_url` or started for `model_path`.
    Both pools share one image store: pulls through `registry`, keeps image disk under
    `max_image_disk`, records image use in `image_state` (a run's eviction order). The one
    set-up of a local run and of a fleet replica. Everything opened is closed on exit or on
    a failure half way."""
    from swe_aem.policy.session import open_policy

    with ExitStack() as stack:
        images = ImageStore(registry=registry, max_disk_bytes=parse_size(max_image_disk), state_file=image_state)
        stack.callback(images.close)
        pool = stack.enter_context(SandboxPool(docker_hosts, max_concurrency=concurrency, config=sandbox,
                                               run_id=run_id, images=images))
        pool.check()
        grade_pool = stack.enter_context(SandboxPool(docker_hosts, max_concurrency=concurrency, config=sandbox,
                                                     run_id=pool.run_id, images=pool.images))
        policy = None
        if client is None:
            policy = stack.enter_context(open_policy(
                model_path, preset, url=server_url, served_name=served_name, concurrency=concurrency,
                log_path=log_path, weight_updates=weight_updates))
            client = policy.client
        harness = Harness(pool, grade_pool, client, policy)
        stack.callback(harness.close)
        yield harness
