"""DeepSpeed ZeRO-2 / ZeRO-3 updates equal a plain torch AdamW update (issue 5)."""

import copy
import os

import pytest
import torch

from swe_aem.algo.losses import PolicyLossConfig, ppo_clip_loss
from swe_aem.train.batch import Sample, TurnLayout, collate
from swe_aem.train.model import EngineSettings, PolicyLogprobs, build_engine
from swe_aem.train.ranks import init_distributed
from swe_aem.train.update import forward_old, ppo_update

pytestmark = pytest.mark.slow

LR = 1e-2
# Adam's epsilon, here well above float32 rounding of the gradients: an entry's update
# lr * m / (sqrt(v) + eps) then moves by at most lr / eps = 10 times its gradient's rounding
# error. With eps=1e-8 the update is about lr * sign(g), so an entry whose gradient is near
# zero turns the rounding of one CPU's kernels into a weight difference of up to 2 * lr
# (the smallest |g| here is 4e-7: amplified ~1e4 times, up to 1.5e-6 measured). 78% of
# the gradient entries stay above 1e-3 (up to 1.2), so Adam's second moment still shapes
# the update, and a ZeRO update that dropped eps would fail.
ADAM_EPS = 1e-3
LOSS = PolicyLossConfig(clip_low=0.2, clip_high=0.28, agg="seq-mean-token-sum")
F32 = torch.finfo(torch.float32).eps


def tiny_lm(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).float()


def make_samples() -> list[Sample]:
    gen = torch.Generator().manual_seed(3)
    out = []
    for k, (n, turns) in enumerate([(20, 2), (33, 3), (12, 1), (27, 2)]):
        ids = torch.randint(1, 97, (n,), generator=gen).tolist()
        mask, turn = [0] * n, [-1] * n
        for t in range(turns):  # sampled stretches separated by prompt tokens
            lo, hi = 3 + t * (n // turns), 3 + t * (n // turns) + (n // turns) // 2
            for p in range(lo, min(hi, n)):
                mask[p], turn[p] = 1, t
        out.append(Sample(ids, mask, [-1.0] * n, turn, group=k // 2, reward=float(k % 2),
                          trainable=True))
    return out


def settings(stage: int) -> EngineSettings:
    return EngineSettings(zero_stage=stage, offload_optimizer=False, offload_params=False, bf16=False,
                          gradient_checkpointing=False, micro_batch_tokens=64, lr=LR,
                          betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1e9, eps=ADAM_EPS)


def reference_update(lm, samples, layout, turn_adv, steps: int):
    """The same loss in plain torch: one padded batch, AdamW."""
    model = PolicyLogprobs(lm, chunk_size=16)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=ADAM_EPS, weight_decay=0.0)
    b = collate(samples, range(len(samples)), layout, pad_id=0)
    losses = []
    for _ in range(steps):
        with torch.no_grad():
            old, _ = model(b["input_ids"], b["attention_mask"], b["targets"])
        lp, _ = model(b["input_ids"], b["attention_mask"], b["targets"])
        adv = torch.where(b["turn"] >= 0, turn_adv[b["turn"].clamp(min=0)], 0.0)
        loss, _ = ppo_clip_loss(lp, old, adv, b["loss_mask"], LOSS, rollout_logprobs=b["rollout_logprobs"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().clone() for k, v in model.lm.state_dict().items()}


@pytest.fixture(scope="module", autouse=True)
def _dist():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    init_distributed()


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_matches_plain_adamw(stage):
    import deepspeed

    samples = make_samples()
    layout = TurnLayout.of(samples)
    turn_adv = torch.linspace(-1.0, 1.0, layout.num_turns)
    lm = tiny_lm()
    ref_losses, ref_params = reference_update(copy.deepcopy(lm), samples, layout, turn_adv, steps=2)

    engine = build_engine(copy.deepcopy(lm), settings(stage), chunk_size=16)
    losses = []
    for _ in range(2):
        old = forward_old(engine, samples, layout, micro_tokens=64, pad_id=0).old_logprobs
        # micro_tokens=64 splits the 4 samples into several micro-batches
        stats = ppo_update(engine, samples, layout, old, turn_adv, LOSS, micro_tokens=64, pad_id=0)
        losses.append(stats["loss"])
    # Each loss is -1/4 of a float32 sum of A * ratio over the sampled tokens (ratio 1: old and
    # new log-probs come from the same forward), summed in another order by each path: a few
    # ulps of the sum of |terms| (6.25 here, 8 ulps = 6e-6; measured 1.8e-7 on AVX-512, AVX2
    # and scalar kernels).
    b = collate(samples, range(len(samples)), layout, pad_id=0)
    adv = torch.where(b["turn"] >= 0, turn_adv[b["turn"].clamp(min=0)], 0.0)
    loss_scale = float((adv.abs() * b["loss_mask"]).sum()) / len(samples)
    assert losses == pytest.approx(ref_losses, abs=8 * F32 * loss_scale)
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        got = {k: v.detach().clone() for k, v in engine.module.lm.state_dict().items()}
    base = lm.state_dict()
    moved = max(float((v - base[k]).abs().max()) for k, v in ref_params.items())
    assert moved > LR  # two steps of about lr on the entries with |g| >> eps
    # Two steps, each moving an entry by at most lr / eps = 10 times its gradient's float32
    # rounding (about 1e-6 of its terms, which are below 1), plus a few ulps of Adam's own
    # arithmetic on weights up to 1: about 1e-5 at worst, under 1e-3 of the move (2e-5).
    # Measured 1.2e-7 to 2.8e-7 (ZeRO-2/3; AVX-512, AVX2 and scalar kernels; 1 or 2 threads),
    # one to two ulps of a weight near 1.
    for k, v in ref_params.items():
        diff = float((got[k] - v).abs().max())
        assert diff <= 1e-3 * moved, (k, diff, moved)


@pytest.mark.parametrize("stage", [2, 3])
def test_packed_micro_batches_equal_padded_ones(stage):
    """Padding-free packing (trainer.pack_sequences): a micro-batch's samples in one row with
    restarting positions and no mask score every token as the padded rows do, and one update
    moves the weights alike; packed, nothing is computed beyond the real tokens."""
    import deepspeed

    samples = make_samples()  # 20, 33, 12, 27 tokens
    layout = TurnLayout.of(samples)
    turn_adv = torch.linspace(-1.0, 1.0, layout.num_turns)
    lm = tiny_lm()
    runs = {}
    for packed in (False, True):
        engine = build_engine(copy.deepcopy(lm), settings(stage), chunk_size=16)
        fwd = forward_old(engine, samples, layout, micro_tokens=64, pad_id=0, packed=packed)
        ppo_update(engine, samples, layout, fwd.old_logprobs, turn_adv, LOSS, micro_tokens=64, pad_id=0,
                   packed=packed)
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
            weights = {k: v.detach().clone() for k, v in engine.module.lm.state_dict().items()}
        runs[packed] = (fwd, weights)
    (pad, w_pad), (pack, w_pack) = runs[False], runs[True]
    assert pack.computed_over_real == 1.0 < pad.computed_over_real
    # the same per-token values, summed in another order by attention over another shape:
    # a log-prob of magnitude up to log(97) = 4.6 within 16 float32 ulps of it
    for a, b in zip(pad.old_logprobs, pack.old_logprobs):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=0, atol=16 * F32 * 4.6)
    assert torch.allclose(pad.turn_entropy, pack.turn_entropy, rtol=0, atol=16 * F32 * 4.6)
    base = lm.state_dict()
    moved = max(float((v - base[k]).abs().max()) for k, v in w_pad.items())
    diff = max(float((w_pack[k] - w_pad[k]).abs().max()) for k in w_pad)
    # one Adam step moves an entry by at most lr / eps = 10 times its gradient's rounding
    # difference (about 1e-6 of its terms): under 1e-3 of the move, as for ZeRO against torch
    assert moved > LR / 2 and diff < 1e-3 * moved, (diff, moved)
