"""The rollout fleet's driver: rollout replicas as Ray actors, each in its own placement group.

The trainer's rank 0 holds one `Fleet`. It places every replica with a placement group of
one bundle (`tensor_parallel_size` GPUs on one node when the cluster has GPUs, else CPUs;
plus any custom resources that pin a replica to a node), hands each episode to one replica
(an episode stays there: its prompt prefix is cached on that server; a task's samples go
to the replica that had the task before, whose node holds its image, while it has room),
gathers episodes with `ray.wait` as they finish, and pushes every weight update to every
replica.

A replica that dies (its actor killed, its node lost, its server gone: a replica ends its
own process then) is restarted by Ray (`max_restarts`) and serves the current weights again
before it gets work (every call names the weights; a fresh replica loads them first); the
episodes it was running are run again on the live replicas. A batch is complete or the
rollout fails (FleetError) unless a partial batch is allowed: then an episode that could
not be run is a Dropped record, never a silent gap. An episode's own infrastructure
failures (a container, a grading) keep the rollout's retries and Dropped records.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

from swe_aem.agent.rollout_batch import Dropped, RolloutResult
from swe_aem.agent.settings import AgentConfig
from swe_aem.agent.trajectory import Episode
from swe_aem.errors import RunError, SweAemError
from swe_aem.fleet.replica import ReplicaSpec, RolloutReplica, Weights, replica_run_id


class FleetError(RunError, RuntimeError):
    """The fleet cannot finish a batch (no replica left, an episode lost too often) or start."""


@dataclass
class FleetStats:
    """What the last rollout did, by replica."""

    episodes: Counter = field(default_factory=Counter)  # replica -> episodes finished there
    nodes: dict[int, str] = field(default_factory=dict)  # replica -> node id it ran on (last)
    replica_deaths: int = 0
    reruns: int = 0  # episodes run again because their replica died
    wall_s: float = 0.0


@dataclass
class _Replica:
    index: int
    handle: Any
    group: Any  # its placement group
    live: bool = True
    gone: bool = False  # dead for good (restarts used up)
    incarnation: int = 0  # deaths noticed so far
    waiting: Any = None  # the ready() call of a restart
    deaths: list[str] = field(default_factory=list)  # why it died, each time (death_reason)
    refusal: BaseException | None = None  # the user-facing error its first set-up failed with


MEMORY_KNOBS = ("lower rollout.replicas, vllm.kv_cache_gib or trainer.micro_batch_tokens, or run on a "
                "node with more memory (`swe-aem plan` counts each process's host RAM against the node's)")


def death_reason(exc: BaseException) -> str:
    """Why Ray says an actor died, in one line: its memory monitor's kill (the node's memory
    and the threshold, as Ray reports them), else the line of Ray's message that says why."""
    import re

    text = str(exc)
    if "NODE_OUT_OF_MEMORY" in text or "low on memory" in text or "memory pressure" in text:
        used = re.search(r"was ([\d.]+GB(?: used)? / [\d.]+GB(?: limit)?) \(([\d.]+)\)", text)
        share = re.search(r"\(([\d.]+%) of \d+B limit\)", text) or re.search(r"threshold of ([\d.]+)", text)
        parts = ([f"node memory {used.group(1)} ({float(used.group(2)):.3f})"] if used else []) + \
            ([f"Ray's threshold {share.group(1)}"] if share else [])
        return "killed by Ray's memory monitor (the node ran short of memory" + \
            (f": {', '.join(parts)}" if parts else "") + ")"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if "creation task" in text:  # its set-up raised: the traceback's last "Class: message" line
        raised = [m for ln in lines if (m := re.match(r"^[\w.]*?(\w+(?:Error|Exception)): (.+)$", ln))]
        if raised:
            return f"its set-up raised {raised[-1].group(1)}: {raised[-1].group(2)}"[:300]
    return next((ln for ln in lines if "exit detail" in ln.lower() or "error" in ln.lower()),
                lines[0] if lines else type(exc).__name__)[:300]


def _replica_lost():
    """The exceptions of a call whose replica died: its actor's death, or Ray's memory kill of it."""
    from ray.exceptions import OutOfMemoryError, RayActorError

    return (RayActorError, OutOfMemoryError)


def node_memory_line() -> str:
    from swe_aem.hostmem import GIB, node_memory

    total, available = node_memory()
    return f"this node: {(total - available) / GIB:.1f} of {total / GIB:.1f} GiB in use now"


class Fleet:
    """`with Fleet(spec, replicas=2) as fleet: fleet.rollout(instances, 4, config=...)`.

    Connects to `ray_address` ("auto", "HOST:PORT") or, when Ray is not initialised in this
    process, starts a local Ray (ray.init()); a connection made here is closed by close().
    `replica_resources[i]` adds custom resources to replica i's bundle (pinning it to nodes
    that offer them); `replica_env[i]` sets environment variables in replica i's process (Ray's
    runtime_env: DOCKER_HOST names another daemon than the node's own).
    """

    def __init__(self, spec: ReplicaSpec, replicas: int = 1, *, ray_address: str | None = None,
                 tensor_parallel_size: int = 1, gpus: bool | None = None, cpus_per_replica: float = 1.0,
                 replica_resources: Sequence[dict[str, float]] | None = None,
                 replica_env: Sequence[dict[str, str]] | None = None, max_restarts: int = 3,
                 max_reruns: int = 3, start_timeout_s: float = 1800.0, restart_timeout_s: float = 1800.0):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        if replicas < 1:
            raise FleetError("a fleet needs at least one replica")
        for name, per in (("replica_resources", replica_resources), ("replica_env", replica_env)):
            if per is not None and len(per) != replicas:
                raise FleetError(f"{name} names {len(per)} replicas, not {replicas}")
        self.spec, self.max_reruns, self.restart_timeout_s = spec, max_reruns, restart_timeout_s
        self.max_restarts = max_restarts
        self._closing = False
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=True)
        self.replicas: list[_Replica] = []
        self.weights: Weights = None  # (version, folder) every replica serves: the run's version
        self._deaths = threading.Lock()
        self.stats = FleetStats()
        self._home: dict[str, int] = {}  # instance id -> the replica that had it before
        self.in_flight: Counter = Counter()  # replica index -> episodes in flight (during a rollout)
        try:
            if gpus is None:
                gpus = ray.cluster_resources().get("GPU", 0) > 0
            base = {"CPU": cpus_per_replica, **({"GPU": tensor_parallel_size} if gpus else {})}
            actor = ray.remote(RolloutReplica)
            for i in range(replicas):
                extra = dict(replica_resources[i]) if replica_resources else {}
                # one bundle: a tensor-parallel group never spans nodes (STRICT_PACK)
                group = placement_group([{**base, **extra}], strategy="STRICT_PACK")
                ready, _ = ray.wait([group.ready()], timeout=start_timeout_s)
                if not ready:
                    raise FleetError(f"replica {i} cannot be placed: it needs {base | extra} on one node; "
                                     f"the cluster has {ray.cluster_resources()}")
                handle = actor.options(
                    num_cpus=cpus_per_replica, num_gpus=tensor_parallel_size if gpus else 0,
                    resources=extra or None, max_restarts=max_restarts, max_task_retries=0,
                    max_concurrency=spec.concurrency + 4,
                    runtime_env={"env_vars": dict(replica_env[i])} if replica_env and replica_env[i] else None,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0),
                ).remote(spec, i)
                self.replicas.append(_Replica(i, handle, group))
            infos = self._start(start_timeout_s)
            self.stats.nodes = {info["index"]: info["node_id"] for info in infos}
        except BaseException:
            self.close()
            raise

    def _start(self, timeout_s: float) -> list[dict[str, Any]]:
        """Wait until every replica serves (its info), Ray restarting one that dies while it
        starts up to max_restarts times (each restart after the replica's back-off); a replica
        whose restarts are used up is gone, and with none left the fleet fails naming why."""
        import ray

        deadline = time.monotonic() + timeout_s
        pending = {r.handle.ready.remote(): r for r in self.replicas}
        infos: list[dict[str, Any]] = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
            if not done:
                raise FleetError(f"replicas did not start within {timeout_s:.0f} s")
            replica = pending.pop(done[0])
            try:
                infos.append(ray.get(done[0]))
            except SweAemError as exc:  # its set-up refused: a restart would fail the same way
                cause = getattr(exc, "cause", None) or exc
                replica.live, replica.gone = False, True
                replica.deaths.append(str(cause))
                replica.refusal = cause
                print(f"fleet: replica {replica.index} cannot start: {cause}", flush=True)
            except _replica_lost() as exc:
                replica.deaths.append(death_reason(exc))
                memory = f"; {node_memory_line()}" if "memory monitor" in replica.deaths[-1] else ""
                if len(replica.deaths) > self.max_restarts:
                    replica.live, replica.gone = False, True
                    print(f"fleet: replica {replica.index} did not start ({replica.deaths[-1]}{memory}); "
                          "its restarts are used up", flush=True)
                    continue
                print(f"fleet: replica {replica.index} died starting ({replica.deaths[-1]}{memory}); restart "
                      f"{len(replica.deaths)} of at most {self.max_restarts}", flush=True)
                replica.incarnation += 1
                pending[replica.handle.ready.options(max_task_retries=-1).remote()] = replica
        if not infos:
            refusals = [r.refusal for r in self.replicas if r.refusal is not None]
            if len(refusals) == len(self.replicas) and len({str(e) for e in refusals}) == 1:
                raise refusals[0]  # every replica refused alike: that error, as a plain run shows it
            raise self._no_replica("start")
        return infos

    # ------------------------------------------------------------------ rollouts
    def rollout(self, instances: Sequence[Any], samples: int | Sequence[int], *, config: AgentConfig,
                grader: str | None = None, max_retries: int = 1, allow_partial: bool = False,
                on_episode: Callable[[Episode], None] | None = None,
                on_result: Callable[[Fleet], None] | None = None) -> RolloutResult:
        """`samples` episodes of every instance (or these sample indices) over the replicas,
        graded by the spec's grader `grader`; ordered by (instance, sample) like
        swe_aem.agent.rollout_batch. `on_result` is called after every gathered episode (tests use
        it to fail a replica mid-step). One rollout at a time; weight pushes may come from
        another thread meanwhile (asynchronous training)."""
        import ray

        t0 = time.perf_counter()
        self.stats = FleetStats(nodes=dict(self.stats.nodes))
        jobs = [(inst, k) for inst in instances for k in (range(samples) if isinstance(samples, int) else samples)]
        queue = deque(range(len(jobs)))
        results: list[Episode | Dropped | None] = [None] * len(jobs)
        losses = [0] * len(jobs)  # times a job's replica died under it
        given_up: dict[int, str] = {}
        running: dict[Any, tuple[int, _Replica, int]] = {}  # ref -> (job, replica, incarnation)
        load = self.in_flight = Counter()  # replica index -> episodes in flight

        while queue or running:
            if self._closing:
                raise FleetError("the fleet was closed during a rollout")
            for job, replica in self._dispatch(queue, jobs, load):
                inst, k = jobs[job]
                ref = replica.handle.run.remote(inst, k, config, self.weights, grader, max_retries)
                running[ref] = (job, replica, replica.incarnation)
                load[replica.index] += 1
            waits = {r.waiting: r for r in self.replicas if r.waiting is not None}
            if not running and not waits:
                break  # work left and no replica to run it
            timeout = None if running else self.restart_timeout_s
            done, _ = ray.wait([*running, *waits], num_returns=1, timeout=timeout)
            if not done:
                for r in waits.values():
                    r.waiting, r.gone = None, True
                continue
            ref = done[0]
            if ref in waits:
                self._restarted(waits[ref], ref)
                continue
            job, replica, incarnation = running.pop(ref)
            load[replica.index] -= 1
            try:
                out, node_id = ray.get(ref)
            except _replica_lost() as exc:
                self._died(replica, incarnation, exc)
                losses[job] += 1
                if losses[job] > self.max_reruns:
                    given_up[job] = f"its replica died {losses[job]} times running it ({exc})"
                else:
                    self.stats.reruns += 1
                    queue.appendleft(job)
                continue
            results[job] = out
            self.stats.episodes[replica.index] += 1
            self.stats.nodes[replica.index] = node_id
            self._home.setdefault(jobs[job][0].instance_id, replica.index)
            if on_episode is not None and isinstance(out, Episode):
                on_episode(out)
            if on_result is not None:
                on_result(self)

        unfinished = [j for j in range(len(jobs)) if results[j] is None]
        if unfinished:
            why = {j: given_up.get(j, "no live replica was left to run it") for j in unfinished}
            if not allow_partial and all(r.gone for r in self.replicas):
                raise self._no_replica(f"run {len(unfinished)} of the batch's {len(jobs)} episodes")
            if not allow_partial:
                first = unfinished[0]
                raise FleetError(f"{len(unfinished)} of {len(jobs)} episodes could not be run "
                                 f"({jobs[first][0].instance_id} sample {jobs[first][1]}: {why[first]}); "
                                 "a step does not go on with a partial batch (rollout.allow_partial_batch)")
            for j in unfinished:
                results[j] = Dropped(jobs[j][0].instance_id, jobs[j][1], losses[j] + 1, f"fleet: {why[j]}")
        self.stats.wall_s = time.perf_counter() - t0
        return RolloutResult([r for r in results if isinstance(r, Episode)],
                             [r for r in results if isinstance(r, Dropped)])

    def _dispatch(self, queue: deque, jobs: list, load: Counter):
        """Fill the live replicas' free slots from the queue's head: a task's home replica
        while it has room, else the least loaded one."""
        capacity = self.spec.concurrency
        while queue:
            live = [r for r in self.replicas if r.live and load[r.index] < capacity]
            if not live:
                return
            job = queue[0]
            home = self._home.get(jobs[job][0].instance_id)
            replica = next((r for r in live if r.index == home), None) or min(live, key=lambda r: load[r.index])
            queue.popleft()
            yield job, replica

    def _restarting(self) -> bool:
        return any(r.waiting is not None for r in self.replicas)

    def _died(self, replica: _Replica, incarnation: int, exc: BaseException) -> None:
        """A call failed because its replica died: count the death once and wait for Ray's
        restart (a ready() call that Ray retries until the actor is back, loading the weights)."""
        with self._deaths:  # a push (trainer thread) and a rollout may both see it
            if incarnation != replica.incarnation or replica.gone:
                return  # an older incarnation's call: this death is already being handled
            replica.incarnation += 1
        replica.live = False
        self.stats.replica_deaths += 1
        why = death_reason(exc)
        replica.deaths.append(why)
        memory = f"; {node_memory_line()}" if "memory monitor" in why else ""
        print(f"fleet: replica {replica.index} died ({why}{memory}); restart {len(replica.deaths)} of at most "
              f"{self.max_restarts}, after a back-off; its episodes run again on the live replicas", flush=True)
        replica.waiting = replica.handle.ready.options(max_task_retries=-1).remote(self.weights)

    def _restarted(self, replica: _Replica, ref: Any) -> None:
        import ray

        replica.waiting = None
        try:
            info = ray.get(ref)
        except _replica_lost() as exc:
            replica.gone = True
            replica.deaths.append(death_reason(exc))
            print(f"fleet: replica {replica.index} is gone for good ({replica.deaths[-1]})", flush=True)
            return
        replica.live = True
        self.stats.nodes[replica.index] = info["node_id"]

    # ------------------------------------------------------------------ weights and the rest
    def label_weights(self, version: int) -> None:
        """The weights served stand for `version` from now on (the trainer stepped without
        changing them); each replica takes the label at its next episode, loading nothing."""
        self.weights = (version, self.weights[1] if self.weights is not None else None)

    def push_weights(self, weights_dir: str, version: int) -> float:
        """Every replica loads the weights in `weights_dir` (a folder each node sees at that
        path) as `version` (the trainer's step count); the slowest push's seconds. A replica
        that dies meanwhile loads them when Ray has restarted it (every later call names
        these weights)."""
        import ray

        self.weights = (version, str(weights_dir))
        calls = {r.handle.push.remote(self.weights): r for r in self.replicas if r.live}
        seconds = 0.0
        for ref, replica in calls.items():
            try:
                seconds = max(seconds, ray.get(ref))
            except _replica_lost() as exc:
                self._died(replica, replica.incarnation, exc)
        if not any(r.live for r in self.replicas) and not self._restarting():
            raise self._no_replica("take the weights")
        return seconds

    def probe(self, token_ids: list[int]) -> list[float]:
        """The served log-probs of `token_ids` on the first live replica."""
        import ray

        return ray.get(self._probed().handle.probe.remote(token_ids))

    def probe_sample(self, prompt_ids: list[int], sampling: Any) -> Any:
        """The sampling parity probe's generation (a policy.client.Generation) on the first
        live replica: every replica serves the same weights with the same server flags."""
        import ray

        return ray.get(self._probed().handle.probe_sample.remote(prompt_ids, sampling))

    def _probed(self) -> Any:
        replica = next((r for r in self.replicas if r.live), None)
        if replica is None and self._restarting():  # a replica Ray is restarting comes back first
            self.wait_for_restarts()
            replica = next((r for r in self.replicas if r.live), None)
        if replica is None:
            raise self._no_replica("probe")
        return replica

    def _no_replica(self, what: str) -> FleetError:
        """The error of a fleet with no replica left: what each replica died of and, when the
        node's memory killed one, the knobs that make the run fit."""
        deaths = "; ".join(f"replica {r.index}: {len(r.deaths)} death(s), last {r.deaths[-1]}"
                           for r in self.replicas if r.deaths) or "no death recorded"
        memory = any("memory monitor" in d for r in self.replicas for d in r.deaths)
        hint = (f" The rollout replicas do not fit this machine's memory ({node_memory_line()}): "
                f"{MEMORY_KNOBS}." if memory else "")
        return FleetError(f"no rollout replica is left to {what} after {self.max_restarts} restart(s) each "
                          f"({deaths}).{hint}")

    def prefetch(self, instances: Sequence[Any]) -> None:
        """Pull the images of the next step's tasks where they will run: every task gets a
        home replica (round robin over the live ones for new tasks), whose node pulls its image."""
        live = [r for r in self.replicas if r.live]
        if not live:
            return
        by_replica: dict[int, set[str]] = {}
        fresh = 0
        for inst in instances:
            home = self._home.get(inst.instance_id)
            if home is None or not self.replicas[home].live:
                home = live[fresh % len(live)].index
                fresh += 1
                self._home[inst.instance_id] = home
            by_replica.setdefault(home, set()).add(inst.image)
        for index, images in by_replica.items():
            self.replicas[index].handle.prefetch.remote(sorted(images))

    def wait_for_restarts(self, timeout: float | None = None) -> None:
        """Wait until every replica Ray is restarting is back (or gone for good)."""
        import ray

        waits = {r.waiting: r for r in self.replicas if r.waiting is not None}
        if not waits:
            return
        done, _ = ray.wait(list(waits), num_returns=len(waits), timeout=timeout or self.restart_timeout_s)
        for ref in done:
            self._restarted(waits[ref], ref)

    def info(self) -> list[dict[str, Any]]:
        """Each live replica's own account (node, pid, weights held, pushes its server saw),
        once the replicas being restarted are back."""
        import ray

        self.wait_for_restarts()
        return ray.get([r.handle.info.remote() for r in self.replicas if r.live])

    def _get(self, refs: list, timeout: float, what: str) -> list:
        import ray
        from ray.exceptions import GetTimeoutError

        try:
            return ray.get(refs, timeout=timeout)
        except GetTimeoutError as exc:
            raise FleetError(f"{what} within {timeout:.0f} s") from exc

    def close(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        self._closing = True  # a rollout on another thread stops at its next turn
        if not ray.is_initialized():
            return
        closing = [r.handle.close.remote() for r in self.replicas if r.live]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=180)
        for r in self.replicas:
            ray.kill(r.handle, no_restart=True)
            remove_placement_group(r.group)
        self._reap([r.index for r in self.replicas if not r.live])
        self.replicas = []
        if self._owns_ray:
            ray.shutdown()

    def _reap(self, indices: list[int]) -> None:
        """The containers of replicas that died for good, on the daemons this process reaches
        (on one machine, all of them; on a cluster, a restarted replica reaps its own node's,
        and the run-id reaper of the next run the rest)."""
        from swe_aem.sandbox import DockerUnavailableError, reap

        for host in list(self.spec.docker_hosts) or [None]:
            for index in indices:
                try:
                    reap(replica_run_id(self.spec.run_id, index), docker_host=host)
                except DockerUnavailableError:
                    break

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
