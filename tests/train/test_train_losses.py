"""The trainer's update uses the policy loss named in the config (issue 9)."""

import copy
import os

import pytest
import torch

from swe_aem.algo.losses import PolicyLossConfig
from swe_aem.train.batch import Sample, TurnLayout
from swe_aem.train.model import EngineSettings, build_engine
from swe_aem.train.ranks import init_distributed
from swe_aem.train.update import forward_old, ppo_update

pytestmark = pytest.mark.slow


def _lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).float()


def _samples() -> list[Sample]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for k in range(4):
        n = 16
        ids = torch.randint(1, 97, (n,), generator=gen).tolist()
        mask = [0] * 4 + [1] * (n - 4)
        turn = [-1] * 4 + [0] * (n - 4)
        out.append(Sample(ids, mask, [-1.0] * n, turn, group=0, reward=float(k % 2), trainable=True))
    return out


def _update(lm, name: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    settings = EngineSettings(zero_stage=2, offload_optimizer=False, offload_params=False, bf16=False,
                              gradient_checkpointing=False, micro_batch_tokens=64, lr=0.05,
                              betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1e9)
    engine = build_engine(copy.deepcopy(lm), settings, chunk_size=32)
    samples = _samples()
    layout = TurnLayout.of(samples)
    adv = torch.tensor([-1.0, 1.0, -1.0, 1.0])
    old = forward_old(engine, samples, layout, micro_tokens=64, pad_id=0).old_logprobs
    # two epochs: the second runs off-policy, where the losses differ (clipped or not)
    stats = ppo_update(engine, samples, layout, old, adv, PolicyLossConfig(name=name), 64, 0, epochs=2)
    assert stats["optimizer_steps"] == 2
    return {k: v.detach().clone() for k, v in engine.module.lm.state_dict().items()}, stats


def test_update_runs_the_named_loss():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_distributed()
    lm = _lm()
    ppo, ppo_stats = _update(lm, "ppo_clip")
    reinforce, reinforce_stats = _update(lm, "reinforce")
    assert ppo_stats["clip_frac"] > 0 and reinforce_stats["clip_frac"] == 0
    assert any(not torch.equal(ppo[k], reinforce[k]) for k in ppo)
    with pytest.raises(KeyError, match="unknown policy loss 'nope'"):
        _update(lm, "nope")


def _two_turn_samples() -> list[Sample]:
    """Four trajectories of two assistant turns each (6 and 4 sampled tokens)."""
    gen = torch.Generator().manual_seed(7)
    out = []
    for k in range(4):
        ids = torch.randint(1, 97, (16,), generator=gen).tolist()
        mask = [0] * 4 + [1] * 6 + [0] * 2 + [1] * 4
        turn = [-1] * 4 + [0] * 6 + [-1] * 2 + [1] * 4
        out.append(Sample(ids, mask, [-1.0] * 16, turn, group=0, reward=float(k % 2), trainable=True))
    return out


def _run(lm, samples, loss_cfg: PolicyLossConfig, epochs: int = 2):
    settings = EngineSettings(zero_stage=2, offload_optimizer=False, offload_params=False, bf16=False,
                              gradient_checkpointing=False, micro_batch_tokens=32, lr=0.05,
                              betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1e9)
    engine = build_engine(copy.deepcopy(lm), settings, chunk_size=32)
    layout = TurnLayout.of(samples)
    adv = torch.tensor([-1.0, 1.0] * (layout.num_turns // 2))
    old = forward_old(engine, samples, layout, micro_tokens=32, pad_id=0).old_logprobs
    stats = ppo_update(engine, samples, layout, old, adv, loss_cfg, 32, 0, epochs=epochs)
    return {k: v.detach().clone() for k, v in engine.module.lm.state_dict().items()}, stats


def test_update_takes_the_turns_and_the_mask_band():
    """Through the engine: per-turn GSPO sees the update's turn ids (two turns per
    trajectory train otherwise than one ratio per trajectory), and a mask band that every
    response falls outside leaves the weights bit for bit (no gradient; Adam moves nothing)."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_distributed()
    lm = _lm()
    samples = _two_turn_samples()
    base = {k: v.detach().clone() for k, v in lm.state_dict().items()}
    by_turn, turn_stats = _run(lm, samples, PolicyLossConfig(name="gspo", gspo_unit="turn"))
    by_traj, _ = _run(lm, samples, PolicyLossConfig(name="gspo"))
    assert any(not torch.equal(by_turn[k], by_traj[k]) for k in by_turn)
    assert any(not torch.equal(by_turn[k], base[k]) for k in by_turn)
    assert turn_stats["is_masked_frac"] == 0.0
    # the random model gives each token ~1/97 (log ~ -4.6) where the rollout said e^-1: every
    # turn's geometric weight is ~0.03, below a band starting at 0.5
    masked, stats = _run(lm, samples, PolicyLossConfig(rollout_is="geometric", rollout_is_mask_low=0.5,
                                                       tis_cap=None))
    assert stats["is_masked_frac"] == 1.0
    assert all(torch.equal(masked[k], base[k]) for k in masked)
