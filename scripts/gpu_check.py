"""GPU-path checks, for a machine with CUDA (CI has none; run by hand or on a lent GPU).

1. The chunked log-prob/entropy head against the naive full-logits one on the GPU:
   agreement, peak memory and time (forward + backward), bf16, T x V x d.
2. DeepSpeed ZeRO-2 and ZeRO-3 single-process PPO updates on CUDA against a plain
   torch AdamW update (same check as tests/train/test_train_deepspeed.py, on the GPU).
3. One bf16 ZeRO-3 training step of a ~0.5B-parameter Llama-shaped model through
   the project's engine: tokens/s and peak memory.

Prints one JSON object.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cuda")

from swe_aem.algo.entropy import chunked_logprobs_and_entropy, naive_logprobs_and_entropy
from swe_aem.algo.losses import PolicyLossConfig, ppo_clip_loss
from swe_aem.train.batch import Sample, TurnLayout, collate
from swe_aem.train.model import EngineSettings, PolicyLogprobs, build_engine
from swe_aem.train.ranks import init_distributed
from swe_aem.train.update import forward_old, ppo_update

DEV = torch.device("cuda")


def kernel(tokens: int, vocab: int, hidden: int, chunk: int = 2048) -> dict:
    torch.manual_seed(0)
    h0 = torch.randn(tokens, hidden, device=DEV, dtype=torch.bfloat16)
    w0 = torch.randn(vocab, hidden, device=DEV, dtype=torch.bfloat16) * 0.02
    y = torch.randint(0, vocab, (tokens,), device=DEV)
    out = {"tokens": tokens, "vocab": vocab, "hidden": hidden, "chunk": chunk}
    results = {}
    for name in ("naive", "chunked"):
        h, w = h0.clone().requires_grad_(), w0.clone().requires_grad_()
        if name == "naive":
            def fn(h=h, w=w):
                return naive_logprobs_and_entropy(h, w, y)
        else:
            def fn(h=h, w=w):
                return chunked_logprobs_and_entropy(h, w, y, chunk_size=chunk)
        for _ in range(2):  # warm-up
            lp, ent = fn()
            lp.sum().backward()
            h.grad = w.grad = None
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            lp, ent = fn()
            lp.sum().backward()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        results[name] = {"lp": lp.detach().float(), "ent": ent.float(), "gw": w.grad.float(),
                         "gh": h.grad.float()}
        out[name] = {"fwd_bwd_ms": 1e3 * sorted(times)[1],
                     "peak_over_inputs_gib": (torch.cuda.max_memory_allocated() - base) / 2**30}
        del lp, ent, fn
    n, c = results["naive"], results["chunked"]
    out["max_abs_diff_logprob"] = float((n["lp"] - c["lp"]).abs().max())
    out["max_abs_diff_entropy"] = float((n["ent"] - c["ent"]).abs().max())
    out["grad_w_rel_err"] = float((n["gw"] - c["gw"]).norm() / n["gw"].norm())
    out["grad_h_rel_err"] = float((n["gh"] - c["gh"]).norm() / n["gh"].norm())
    out["peak_mem_ratio"] = out["chunked"]["peak_over_inputs_gib"] / out["naive"]["peak_over_inputs_gib"]
    out["time_ratio"] = out["chunked"]["fwd_bwd_ms"] / out["naive"]["fwd_bwd_ms"]
    return out


def tiny_lm(seed=0, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
           "tie_word_embeddings": True}
    cfg.update(kw)
    return LlamaForCausalLM(LlamaConfig(**cfg))


def samples(vocab: int = 97, lengths=(20, 33, 12, 27), seed: int = 3) -> list[Sample]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for k, n in enumerate(lengths):
        ids = torch.randint(1, vocab, (n,), generator=gen).tolist()
        mask = [1 if (p // 5) % 2 else 0 for p in range(n)]
        turn = [(p // 10) if m else -1 for p, m in enumerate(mask)]
        out.append(Sample(ids, mask, [-1.0] * n, turn, group=k // 2, reward=float(k % 2), trainable=True))
    return out


def settings(stage: int, bf16=False, lr=1e-2, micro=64) -> EngineSettings:
    return EngineSettings(zero_stage=stage, offload_optimizer=False, offload_params=False, bf16=bf16,
                          gradient_checkpointing=False, micro_batch_tokens=micro, lr=lr,
                          betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1e9)


def zero_vs_adamw(stage: int) -> dict:
    import deepspeed

    loss_cfg = PolicyLossConfig(agg="seq-mean-token-sum")
    ss = samples()
    layout = TurnLayout.of(ss)
    adv = torch.linspace(-1, 1, layout.num_turns)
    lm = tiny_lm().float()
    ref = PolicyLogprobs(copy.deepcopy(lm).to(DEV), chunk_size=16)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, eps=1e-8, weight_decay=0.0)
    b = {k: v.to(DEV) for k, v in collate(ss, range(len(ss)), layout, 0).items()}
    ref_losses = []
    for _ in range(2):
        with torch.no_grad():
            old, _ = ref(b["input_ids"], b["attention_mask"], b["targets"])
        lp, _ = ref(b["input_ids"], b["attention_mask"], b["targets"])
        a = torch.where(b["turn"] >= 0, adv.to(DEV)[b["turn"].clamp(min=0)], 0.0)
        loss, _ = ppo_clip_loss(lp, old, a, b["loss_mask"], loss_cfg, rollout_logprobs=b["rollout_logprobs"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())
    engine = build_engine(copy.deepcopy(lm).to(DEV), settings(stage), chunk_size=16)
    losses = []
    for _ in range(2):
        old = forward_old(engine, ss, layout, 64, 0).old_logprobs
        losses.append(ppo_update(engine, ss, layout, old, adv, loss_cfg, 64, 0)["loss"])
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
        got = {k: v.detach().float().cpu() for k, v in engine.module.lm.state_dict().items()}
    want = {k: v.detach().float().cpu() for k, v in ref.lm.state_dict().items()}
    diff = max(float((got[k] - want[k]).abs().max()) for k in want)
    return {"stage": stage, "losses": losses, "ref_losses": ref_losses, "max_param_abs_diff": diff,
            "ok": diff < 1e-4 and all(abs(a - b) < 1e-4 for a, b in zip(losses, ref_losses))}


def bf16_zero3_step() -> dict:
    lm = tiny_lm(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=12,
                 num_attention_heads=14, num_key_value_heads=2).to(torch.bfloat16)
    n_params = sum(p.numel() for p in lm.parameters())
    ss = samples(vocab=151936, lengths=(4096, 3000, 2048, 1500, 4096, 1024), seed=5)
    layout = TurnLayout.of(ss)
    engine = build_engine(lm.to(DEV), settings(3, bf16=True, lr=1e-6, micro=8192), chunk_size=2048)
    adv = torch.randn(layout.num_turns)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fwd = forward_old(engine, ss, layout, 8192, 0)
    stats = ppo_update(engine, ss, layout, fwd.old_logprobs, adv, PolicyLossConfig(), 8192, 0)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    tokens = sum(len(s.input_ids) for s in ss)
    return {"params_m": n_params / 1e6, "tokens": tokens, "step_s": dt, "tokens_per_s": 2 * tokens / dt,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "loss": stats["loss"],
            "entropy_mean": float(fwd.turn_entropy.mean())}


def main() -> None:
    report = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    init_distributed()
    for stage in (2, 3):
        report[f"zero{stage}_vs_adamw"] = zero_vs_adamw(stage)
        print(json.dumps(report[f"zero{stage}_vs_adamw"]), file=sys.stderr, flush=True)
    report["bf16_zero3_step"] = bf16_zero3_step()
    print(json.dumps(report["bf16_zero3_step"]), file=sys.stderr, flush=True)
    report["kernel"] = [kernel(8192, v, 3584) for v in (49152, 151936)]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
