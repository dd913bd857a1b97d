"""Optimizer offload with gradient accumulation on two gloo ranks (issue 28): ZeRO-2 and
ZeRO-3 with `offload_optimizer` (DeepSpeed's CPU Adam, the optimizer of every preset from
14b up), several micro-batches per rank against one, on the same batch and shards.

Offload is compared with offload: DeepSpeed's CPU Adam is not torch's AdamW (its own fused
kernel), so the reference is the same optimizer with one micro-batch per optimizer step.
DeepSpeed builds the cpu_adam op on first use (a JIT C++ build, g++ and ninja; cached under
TORCH_EXTENSIONS_DIR, which the Makefile points at ~/.cache/swe-aem/torch_extensions).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

# One rank's part: for each ZeRO stage and micro-batch budget, a fresh engine from the same
# random model trains two PPO epochs of one mini-batch on the rank's token-balanced shard
# (two samples, in one micro-batch or two);
# rank 0 writes the gathered weights' distance from the start and from the one-micro run.
_RANK = r"""
import copy, json, sys
import deepspeed, torch
sys.path[:0] = [sys.argv[2], sys.argv[2].rsplit("/", 1)[0]]  # this test folder, tests/
from test_train_deepspeed import ADAM_EPS, LR, LOSS, make_samples, tiny_lm
from swe_aem.train.batch import TurnLayout, balanced_shards, pack_by_tokens
from swe_aem.train.model import EngineSettings, build_engine
from swe_aem.train.ranks import init_distributed
from swe_aem.train.update import forward_old, ppo_update

rank, world = init_distributed()
samples = make_samples()
layout = TurnLayout.of(samples)
turn_adv = torch.linspace(-1.0, 1.0, layout.num_turns)
shard = balanced_shards([len(s.input_ids) for s in samples], world)[rank]
lm = tiny_lm()
base = {k: v.detach().clone() for k, v in lm.state_dict().items()}
out = {}
for stage in (2, 3):
    runs = {}
    for micro in (1024, 40):  # one micro-batch per rank and mini-batch; one sample each
        s = EngineSettings(zero_stage=stage, offload_optimizer=True, offload_params=False, bf16=False,
                           gradient_checkpointing=False, micro_batch_tokens=micro, lr=LR,
                           betas=(0.9, 0.999), weight_decay=0.0, grad_clip=1e9, eps=ADAM_EPS)
        engine = build_engine(copy.deepcopy(lm), s, chunk_size=16)
        assert type(engine.optimizer.optimizer).__name__ == "DeepSpeedCPUAdam", type(engine.optimizer.optimizer)
        old = forward_old(engine, samples, layout, micro, 0, indices=shard).old_logprobs
        gen = torch.Generator().manual_seed(1)
        stats = ppo_update(engine, samples, layout, old, turn_adv, LOSS, micro, 0, mini_batches=1,
                           epochs=2, generator=gen, indices=shard)
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), enabled=stage == 3):
            runs[micro] = ({k: v.detach().clone() for k, v in engine.module.lm.state_dict().items()},
                           stats, max(len(pack_by_tokens([len(samples[i].input_ids) for i in shard], micro)), 1))
    (w1, s1, n1), (wn, sn, nn) = runs[1024], runs[40]
    out[stage] = {
        "moved": max(float((w1[k] - base[k]).abs().max()) for k in base),
        "diff": max(float((w1[k] - wn[k]).abs().max()) for k in base),
        "loss": [s1["loss"], sn["loss"]], "steps": [s1["optimizer_steps"], sn["optimizer_steps"]],
        "shard_samples": len(shard), "micro_in_shard": [n1, nn],
    }
if rank == 0:
    print("RESULT " + json.dumps(out), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offload_accumulation_equals_one_micro_batch_on_two_ranks():
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), DS_ACCELERATOR="cpu")
    tests = str(Path(__file__).resolve().parent)
    procs = [subprocess.Popen([sys.executable, "-c", _RANK, str(r), tests], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    line = next(x for x in outs[0][0].splitlines() if x.startswith("RESULT "))
    result = {int(k): v for k, v in json.loads(line[len("RESULT "):]).items()}
    from test_train_deepspeed import LR

    for stage, r in result.items():
        assert r["steps"] == [2.0, 2.0], (stage, r)  # 2 epochs x 1 mini-batch
        assert r["shard_samples"] == 2 and r["micro_in_shard"] == [1, 2], (stage, r)  # accumulation ran
        assert r["moved"] > LR, (stage, r)  # two Adam steps of about lr on most entries
        # as tests/train/test_train_deepspeed.py bounds ZeRO against AdamW: each step moves an entry
        # by at most lr / eps = 10 x its gradient's float32 rounding (the micro-batches sum it
        # in another order), two steps: under 1e-3 of the move
        assert r["diff"] <= 1e-3 * r["moved"], (stage, r)
        # the losses are the same sums split in two: a few float32 ulps
        assert r["loss"][1] == pytest.approx(r["loss"][0], rel=1e-5), (stage, r)
