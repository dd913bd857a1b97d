"""The rollout fleet on a real multi-node Ray cluster made of local processes
(ray.cluster_utils.Cluster: a head and two nodes, each offering a custom resource that pins
a replica to it), replicas backed by the scripted stand-in (ScriptedPolicyServer: the real
HTTP routes, weight pushes recorded) and real containers of the local suite, graded for real.

Episodes spread over the nodes; a weight push reaches every replica; a replica killed mid-step
(ray.kill of its actor) or whose server dies is restarted by Ray with the current weights and
its episodes run again, nothing lost; with no replica left a step fails unless a partial batch
is allowed, and then the lost episodes are Dropped records.
"""

from __future__ import annotations

import uuid
from functools import partial

import pytest

from swe_aem.agent.loop import AgentConfig
from swe_aem.fleet import Fleet, FleetError, ReplicaSpec
from swe_aem.fleet.stand_in import FINISH, ScriptedStandIn
from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import editor_calls_for_patch
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
                       stand_in=ScriptedStandIn(scripts=script, **stand_in))


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
    fleet.push_weights(str(w1))
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
    fleet.push_weights(str(w2))
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


def test_a_dead_server_restarts_its_replica_and_loses_nothing(cluster, tasks, tmp_path):
    """One replica, as today's single server: its server stops answering mid-step; the
    replica ends itself, Ray restarts it with the pushed weights, the episodes run again."""
    w = weights(tmp_path, "w")
    with Fleet(spec(tasks, die_after={0: 5}), 1, replica_resources=[{"node_a": 1}]) as fleet:
        fleet.push_weights(str(w))
        result = fleet.rollout(tasks, 2, config=CONFIG, grader="train")
        check_batch(result, 2)
        assert fleet.stats.replica_deaths == 1 and fleet.stats.reruns >= 1
        (info,) = fleet.info()
        assert info["restarted"] and info["weight_pushes"] == [str(w.resolve())]


def test_no_replica_left_fails_the_step_unless_partial_batches_are_allowed(cluster, tasks):
    import ray

    with Fleet(spec(tasks, latency_s=1.0), 1, max_restarts=0, replica_resources=[{"node_b": 1}]) as fleet:
        def kill(f):
            if f.in_flight[0] > 0:
                ray.kill(f.replicas[0].handle, no_restart=False)

        result = fleet.rollout([tasks[1]], 2, config=CONFIG, grader="train", allow_partial=True,
                               on_result=kill)
        assert len(result.episodes) == 1 and len(result.dropped) == 1
        assert "no live replica" in result.dropped[0].reason
        with pytest.raises(FleetError, match="partial batch"):
            fleet.rollout([tasks[1]], 2, config=CONFIG, grader="train")
