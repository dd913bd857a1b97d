"""A training step with a colocated vLLM asleep around its update (swe_aem.train.loop), at
the HTTP boundary: the stand-in server plays vLLM's sleep mode (tests/policy/test_policy_sleep.py)."""

from __future__ import annotations

import pytest

from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import ScriptedPolicyServer, script
from swe_aem.policy.session import open_policy

COLOCATED_UPDATE = ["POST /sleep?level=1", "POST /wake_up?tags=weights", "POST /collective_rpc",
                    "POST /wake_up?tags=kv_cache", "POST /reset_prefix_cache", "POST /v1/completions"]


@pytest.mark.slow  # a DeepSpeed engine: about 10 s of CPU
def test_a_training_step_sleeps_vllm_around_its_update(small_model, tmp_path, monkeypatch):
    """The trainer's own sequence (swe_aem.train.loop) on a replayed step: probe, sleep,
    forward and update while vLLM sleeps, wake the weights, push, wake the KV cache, probe."""
    from types import SimpleNamespace

    from helpers import write_short_replay
    from transformers import AutoTokenizer

    from swe_aem.config import load_config
    from swe_aem.train import loop
    from swe_aem.train.rollouts import LiveRollouts, ReplayRollouts

    replay = tmp_path / "replay.jsonl"
    write_short_replay(replay)
    cfg = load_config("rloo_aem", overrides=[
        f"model={small_model}", f"run.replay={replay}", "run.steps=1", "rollout.tasks_per_step=2",
        "rollout.samples_per_task=4", "trainer.micro_batch_tokens=96", "trainer.logprob_chunk_size=64",
        "algo.aem_min_range=0.0", "heldout.split=null",
        "rollout.parity_max_kl=null", "vllm.gpu_memory_utilization=0.55"])
    with ScriptedPolicyServer(AutoTokenizer.from_pretrained(small_model), script(["ok"]),
                              sleep_routes=True) as server:
        session = open_policy(None, load_preset("32b"), url=server.base_url, weight_updates=True, sleep=True)

        class SleepingSource(ReplayRollouts):  # recorded episodes, a live policy session
            pushes_weights = True
            harness = SimpleNamespace(policy=session)
            release_gpus, _session = LiveRollouts.release_gpus, LiveRollouts._session  # the trainer's own

            def probe_logprobs(self, token_ids):
                return session.client.score_sync(token_ids)

            def push_weights(self, weights_dir, version):
                return session.push_weights(weights_dir)

        seen = []

        def while_asleep(fn, name):
            def wrapped(*args, **kwargs):
                seen.append((name, frozenset(server.asleep)))
                return fn(*args, **kwargs)
            return wrapped

        monkeypatch.setattr(loop, "forward_old", while_asleep(loop.forward_old, "forward"))
        monkeypatch.setattr(loop, "ppo_update", while_asleep(loop.ppo_update, "update"))
        trainer = loop.Trainer(cfg, tmp_path / "run")
        assert trainer.preset.gpu_memory_utilization == 0.55  # the config's vllm.* reach the server
        trainer.source, trainer.pushes_weights = SleepingSource(replay), True
        metrics = trainer.step().metrics
    everything = frozenset({"weights", "kv_cache"})
    assert seen == [("forward", everything), ("update", everything)]
    assert server.calls == ["POST /v1/completions", *COLOCATED_UPDATE], server.calls
    assert metrics["probe_server_change"] == pytest.approx(0.125)  # the push showed in the served log-probs
    assert len(server.weight_pushes) == 1 and not session.asleep
