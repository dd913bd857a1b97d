"""The rollout fleet on a real multi-node Ray cluster made of local processes
(ray.cluster_utils.Cluster: a head and two nodes, each offering a custom resource that pins
a replica to it), replicas backed by the scripted stand-in (ScriptedPolicyServer: the real
HTTP routes, weight pushes recorded) and real containers of the local suite, graded for real.

Episodes spread over the nodes; a weight push reaches every replica; a replica killed mid-step
(ray.kill of its actor) or whose server dies is restarted by Ray with the current weights and
its episodes run again, nothing lost; a replica whose Docker daemon is lost mid-step (a socket
proxy to the real daemon, closed) gives its episodes to the other replica; with no replica
left a step fails unless a partial batch is allowed, and then the lost episodes are Dropped records;
a replica whose first set-up is refused (no Docker daemon) is given up at once with the reason.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import uuid
from functools import partial
from types import SimpleNamespace

import pytest

from swe_aem.agent.settings import AgentConfig
from swe_aem.fleet import Fleet, FleetError, ReplicaSpec
from swe_aem.fleet.replica import replica_run_id
from swe_aem.fleet.stand_in import FINISH, ScriptedStandIn
from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import editor_calls_for_patch, tool_call_text
from swe_aem.reward import grader

pytestmark = [pytest.mark.slow, pytest.mark.docker]

SOLVED, GIVEN_UP = "swe-aem__pyledger-3", "swe-aem__textkit-3"
CONFIG = AgentConfig(max_turns=6, temperature=0.0, tool_call_format="xml")


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    c.add_node(num_cpus=2, resources={"node_a": 2})
    c.add_node(num_cpus=2, resources={"node_b": 2})
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def tasks(local_instances):
    by_id = {i.instance_id: i for i in local_instances}
    return by_id[SOLVED], by_id[GIVEN_UP]


def spec(tasks, **stand_in) -> ReplicaSpec:
    """Replicas whose stand-in plays the gold edits on SOLVED and finishes at once elsewhere."""
    solved = tasks[0]
    script = {solved.problem_statement.strip(): editor_calls_for_patch(solved.patch) + [FINISH]}
    return ReplicaSpec(tokenizer_path=str(load_preset("tiny").default_path), concurrency=2,
                       run_id=f"pytest-fleet-{uuid.uuid4().hex[:6]}",
                       graders={"train": partial(grader, timeout=120)},
                       stand_in=ScriptedStandIn(scripts=script, **stand_in),
                       restart_backoff_s=0.5, max_backoff_s=1.0)  # the back-off's own test: test_fleet_memory


@pytest.fixture(scope="module")
def fleet(cluster, tasks):
    """Two replicas, one pinned to each node; every stand-in completion takes 0.3 s."""
    with Fleet(spec(tasks, latency_s=0.3), 2, replica_resources=[{"node_a": 1}, {"node_b": 1}]) as f:
        yield f


def weights(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"stand-in weights")  # a push only names the folder
    return folder


def check_batch(result, samples):
    got = sorted((e.instance_id, e.sample_index) for e in result.episodes)
    assert got == sorted((i, k) for i in (SOLVED, GIVEN_UP) for k in range(samples)), result.dropped
    assert result.dropped == []
    for ep in result.episodes:
        assert ep.termination == "finished"
        assert ep.reward == (1.0 if ep.instance_id == SOLVED else 0.0), (ep.grade_status, ep.grade_reason)


def test_episodes_spread_over_nodes_and_weights_reach_every_replica(fleet, tasks, tmp_path):
    w1 = weights(tmp_path, "w1")
    fleet.push_weights(str(w1), 1)
    result = fleet.rollout(tasks, 2, config=CONFIG, grader="train")
    check_batch(result, 2)
    # both replicas ran episodes, on two different nodes of the cluster
    assert set(fleet.stats.episodes) == {0, 1}
    assert fleet.stats.nodes[0] != fleet.stats.nodes[1]
    infos = fleet.info()
    assert {i["node_id"] for i in infos} == set(fleet.stats.nodes.values())
    for info in infos:  # the push went through each replica's server route
        assert info["weight_pushes"][-1] == str(w1.resolve())
        assert info["weights"] == fleet.weights


def test_a_replica_killed_mid_step_has_its_episodes_run_again(fleet, tasks, tmp_path):
    import ray

    w2 = weights(tmp_path, "w2")
    fleet.push_weights(str(w2), 2)
    victim = fleet.replicas[1]
    pid_before = ray.get(victim.handle.info.remote())["pid"]
    killed = []

    def kill_mid_step(f):
        if not killed and f.in_flight[1] > 0:  # replica 1 is running episodes right now
            killed.append(f.in_flight[1])
            ray.kill(victim.handle, no_restart=False)  # Ray may restart it

    result = fleet.rollout(tasks, 4, config=CONFIG, grader="train", on_result=kill_mid_step)
    assert killed, "replica 1 had no episode in flight to lose"
    check_batch(result, 4)  # the batch is complete: nothing lost, nothing dropped
    assert fleet.stats.replica_deaths == 1
    assert fleet.stats.reruns >= killed[0]
    # Ray restarted it (a new process) from the current weights: its fresh server got w2
    info = next(i for i in fleet.info() if i["index"] == 1)
    assert info["restarted"] and info["pid"] != pid_before
    assert info["weights"] == fleet.weights and info["weight_pushes"] == [str(w2.resolve())]


class DaemonProxy:
    """A Docker daemon that can be lost: a unix socket forwarding to the real one until kill()."""

    def __init__(self, target: str = "/var/run/docker.sock"):
        self.path = os.path.join(tempfile.mkdtemp(prefix="fleet-"), "docker.sock")  # short: AF_UNIX
        self.target, self.alive, self.sockets = target, True, []
        self.cut_at: int | None = None  # kill() when the client's request of this number comes
        self.requests, self.lock = 0, threading.Lock()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(128)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.alive:
            try:
                client, _ = self.server.accept()
                upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                upstream.connect(self.target)
            except OSError:
                return
            self.sockets += [client, upstream]
            for a, b, counted in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, counted), daemon=True).start()

    def cut_after(self, requests: int) -> None:
        """Lose the daemon when the `requests`-th Docker API request from now arrives (it is
        not forwarded): the loss falls inside whatever the client was doing, by construction."""
        self.requests, self.cut_at = 0, requests

    def _pump(self, a, b, counted: bool):
        try:
            while data := a.recv(65536):
                if counted and self.cut_at is not None:
                    self.requests += data.count(b" HTTP/1.1\r\n")  # a request line
                    if self.requests >= self.cut_at:
                        self.kill()
                        return
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def kill(self):
        """The daemon is gone: no new connection, every open one cut."""
        with self.lock:
            if not self.alive:
                return
            self.alive = False
            self.server.close()
            os.unlink(self.path)
            for sock in list(self.sockets):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def test_a_lost_docker_daemon_has_its_replicas_episodes_run_elsewhere(cluster, tasks):
    """Replica 1 reaches Docker through a proxy that is closed mid-step: its episodes fail, it
    finds the daemon gone and ends itself; Ray's restart fails on the still-missing daemon,
    so the replica is given up and replica 0 runs its episodes. Nothing lost."""
    from swe_aem.sandbox import reap

    proxy = DaemonProxy()
    s = spec(tasks, latency_s=0.3)
    try:
        with Fleet(s, 2, replica_resources=[{"node_a": 1}, {"node_b": 1}],
                   replica_env=[{}, {"DOCKER_HOST": f"unix://{proxy.path}"}]) as fleet:
            # the third Docker request replica 1 sends in this rollout is cut: it falls inside one of
            # its first episodes (each sends more), not after them (an on_result trigger raced the
            # episodes' own end: CI stop 36)
            proxy.cut_after(3)
            result = fleet.rollout(tasks, 4, config=CONFIG, grader="train")
            assert not proxy.alive, "replica 1 sent fewer than three Docker requests"
            check_batch(result, 4)
            assert fleet.stats.replica_deaths >= 1 and fleet.stats.reruns >= 1
            fleet.wait_for_restarts(120)
            assert [r.index for r in fleet.replicas if r.live] == [0]
    finally:
        proxy.kill()
        reap(replica_run_id(s.run_id, 1))  # what replica 1 started through the proxy


def test_a_replica_whose_first_set_up_is_refused_is_given_up_at_once_with_the_reason(cluster, tasks):
    """Replica 0's node has no Docker daemon when the fleet starts: its set-up's error (a
    user-facing one) is not restarted; the other replica serves. With no daemon for either,
    the fleet raises that error itself, as a single-server run shows it."""
    from swe_aem.sandbox.daemon import DockerUnavailableError

    dead = {"DOCKER_HOST": f"unix://{tempfile.mkdtemp()}/no-daemon.sock"}
    pinned = [{"node_a": 1}, {"node_b": 1}]
    with Fleet(spec(tasks), 2, replica_resources=pinned, replica_env=[dead, {}]) as fleet:
        assert [(r.live, r.gone) for r in fleet.replicas] == [(False, True), (True, False)]
        (why,) = fleet.replicas[0].deaths  # one attempt: no restart
        assert "no Docker daemon answers" in why and dead["DOCKER_HOST"] in why
        result = fleet.rollout([tasks[1]], 2, config=CONFIG)
        assert len(result.episodes) == 2 and fleet.stats.episodes == {1: 2}
    with pytest.raises(DockerUnavailableError, match="no Docker daemon answers.*ensure_docker"):
        Fleet(spec(tasks), 2, replica_resources=pinned, replica_env=[dead, dead])


def test_a_dead_server_restarts_its_replica_and_loses_nothing(cluster, tasks, tmp_path):
    """One replica, as today's single server: its server stops answering mid-step; the
    replica ends itself, Ray restarts it with the pushed weights, the episodes run again."""
    w = weights(tmp_path, "w")
    with Fleet(spec(tasks, die_after={0: 5}), 1, replica_resources=[{"node_a": 1}]) as fleet:
        fleet.push_weights(str(w), 1)
        result = fleet.rollout(tasks, 2, config=CONFIG, grader="train")
        check_batch(result, 2)
        assert fleet.stats.replica_deaths == 1 and fleet.stats.reruns >= 1
        (info,) = fleet.info()
        assert info["restarted"] and info["weight_pushes"] == [str(w.resolve())]


def test_no_replica_left_fails_the_step_unless_partial_batches_are_allowed(cluster, tasks):
    import ray

    # ungraded; GIVEN_UP finishes at its first 1 s turn, SOLVED runs 8 shell turns first: it is
    # still running when GIVEN_UP is gathered, and is lost with the replica
    shell = tool_call_text("xml", "execute_bash", command="true")
    stand_in = ScriptedStandIn(scripts={tasks[0].problem_statement.strip(): [shell] * 8 + [FINISH]},
                               latency_s=1.0)
    s = ReplicaSpec(tokenizer_path=str(load_preset("tiny").default_path), concurrency=2,
                    run_id=f"pytest-fleet-{uuid.uuid4().hex[:6]}", stand_in=stand_in)
    with Fleet(s, 1, max_restarts=0, replica_resources=[{"node_b": 1}]) as fleet:
        def kill(f):
            if f.in_flight[0] > 0:
                ray.kill(f.replicas[0].handle, no_restart=False)

        config = AgentConfig(max_turns=10, temperature=0.0, tool_call_format="xml")
        result = fleet.rollout(tasks, 1, config=config, allow_partial=True, on_result=kill)
        assert [e.instance_id for e in result.episodes] == [GIVEN_UP], result
        assert [d.instance_id for d in result.dropped] == [SOLVED], result
        assert "no live replica" in result.dropped[0].reason
        assert fleet.stats.replica_deaths == 1
        with pytest.raises(FleetError, match="no rollout replica is left to run 2 of the batch.s 2 episodes .*replica 0: [0-9]+ death"):
            fleet.rollout([tasks[1]], 2, config=config)


def test_a_run_config_that_names_a_fleet_rolls_out_on_it(cluster, tasks, tmp_path):
    """The trainer's rollout source: open_rollouts(cfg) is a FleetRollouts when the config names
    a fleet (rollout.replicas > 1 or run.ray_address), with LiveRollouts' interface."""
    from transformers import AutoTokenizer

    from swe_aem.config import load_config
    from swe_aem.train.rollouts import FleetRollouts
    from swe_aem.train.sources import open_rollouts

    cfg = load_config(overrides=[f"run.ray_address={cluster.address}", "rollout.replicas=2",
                                 "rollout.samples_per_task=2", "rollout.concurrency=2",
                                 "run.grade_timeout_s=120"])
    preset = load_preset("tiny")
    path = preset.default_path
    source = open_rollouts(cfg, preset, path, AutoTokenizer.from_pretrained(path), tmp_path,
                           f"pytest-fleet-{uuid.uuid4().hex[:6]}", stand_in=spec(tasks).stand_in)
    try:
        assert isinstance(source, FleetRollouts) and source.pushes_weights
        source.prefetch(list(tasks))  # each task gets a home replica, whose node pulls its image
        w = weights(tmp_path, "v000001")
        source.push_weights(w, 1)
        episodes, timings = source.collect(list(tasks), step=0)
        check_batch(SimpleNamespace(episodes=episodes, dropped=source.dropped), 2)
        assert timings["episodes_dropped"] == 0 and timings["fleet_replicas_used"] == 2
        assert (tmp_path / "trajectories" / "step-000000.jsonl").is_file()
        assert [i["weights"] for i in source.fleet.info()] == [(1, str(w))] * 2
    finally:
        source.close()


def test_asynchronous_rollouts_on_the_fleet_keep_the_staleness_bound(cluster, tasks, tmp_path):
    """rollout.max_staleness=1 on a fleet: step t+1's batch runs on the replicas while step t
    "trains" (a pause here) and its weights are pushed to every replica mid-batch; every
    batch is complete and no token is more than one version old."""
    import time

    from transformers import AutoTokenizer

    from swe_aem.config import load_config
    from swe_aem.train.sources import open_rollouts
    from swe_aem.train.stream import RolloutStream, staleness_metrics

    cfg = load_config(overrides=[f"run.ray_address={cluster.address}", "rollout.replicas=2",
                                 "rollout.samples_per_task=2", "rollout.concurrency=2", "run.steps=3",
                                 "rollout.max_staleness=1", "run.grade_timeout_s=120"])
    preset = load_preset("tiny")
    path = preset.default_path
    stream = open_rollouts(cfg, preset, path, AutoTokenizer.from_pretrained(path), tmp_path,
                           f"pytest-fleet-{uuid.uuid4().hex[:6]}", batch_of=lambda t: list(tasks),
                           stand_in=spec(tasks, latency_s=0.3).stand_in)
    assert isinstance(stream, RolloutStream)
    live = stream.live
    stale = []
    try:
        for step in range(3):
            episodes, m = stream.collect(list(tasks), step)
            check_batch(SimpleNamespace(episodes=episodes, dropped=stream.dropped), 2)
            if step == 0:
                assert m["rollout_batches_in_flight"] == 2.0
            stale.append(staleness_metrics(episodes, step, bound=1).get("staleness_1_share", 0.0))
            time.sleep(3)  # the update, while the next batch runs on the replicas
            stream.push_weights(weights(tmp_path, f"v{step + 1}"), step + 1)
        assert stale[0] == 0.0 and max(stale[1:]) > 0.0
        assert [i["weights"][0] for i in live.fleet.info()] == [3, 3]
    finally:
        stream.close()
