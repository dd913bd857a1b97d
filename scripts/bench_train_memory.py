"""The trainer's host memory, phase by phase, before and after issue 33's cuts, side by side.

The real trainer (`swe_aem.train.loop.Trainer`, DeepSpeed ZeRO-2, the tiny model, the default
run's settings) trains on recorded episodes of the default run's longest shape (`run.replay`:
6 turns, 3,120 tokens, about rollout.agent.max_context_tokens + a last response: the longest the
rollout lets through; one task x 2 samples, one step: the peak is the longest micro-batch's,
and a step of the default's 8 such samples takes over 10 minutes here), so no vLLM is needed. Each arm runs in a process of its own;
swe_aem.hostmem.PhaseMeter (the kernel's high-water mark, reset at each phase's start) gives
the exact peak RSS of each phase: the engine's set-up
(model + DeepSpeed state), forward_old, the update, the weight source for a push (the disk
push's safetensors write), the checkpoint, and between steps (after the step's memory is
given back). VmHWM bounds the whole run.

Arms: `before` reinstates what the code did before (ZeRO-2, no gradient checkpointing,
4096-token micro-batches, DeepSpeed's 5e8-element buckets, a clone of every tensor for the
safetensors write, glibc's default arenas, no trim); `zero2` is the code as it is on ZeRO-2
(the GPU presets' engine; its float32 master copy and gradient partition); `after` is the code
as it is (the tiny preset on ZeRO-0: one CPU rank has nothing to partition); `heap` is `after`
with glibc's own rising mmap threshold (hostmem.map_large_allocations left out). Prints one JSON object
with each arm's peaks (GiB) and after / before per phase. Target: the trainer's peak < 4 GiB.

    .venv/bin/python scripts/bench_train_memory.py [--steps 1] [--arms before after]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

GIB = 1024**3


def write_replay(path: Path, *, tasks: int = 1, samples: int = 2, turns: int = 6, first_prompt: int = 900,
                 response: int = 120, observation: int = 300, seed: int = 0) -> int:
    """Recorded episodes of the default run's shape (random tokens of the tiny vocabulary);
    the longest sample's tokens."""
    import random

    from swe_aem.agent.trajectory import Episode, Turn, write_episodes

    rng = random.Random(seed)
    eps = []
    for t in range(tasks):
        for k in range(samples):
            ts = []
            for j in range(turns):
                n = first_prompt if j == 0 else observation
                ts.append(Turn(prompt_ids=[rng.randrange(10, 49000) for _ in range(n)],
                               response_ids=[rng.randrange(10, 49000) for _ in range(response)],
                               logprobs=[-rng.random() * 2 for _ in range(response)], finish_reason="stop"))
            eps.append(Episode(f"task-{t}", k, ts, termination="finished", reward=float((k + t) % 2 == 0),
                               grade_status="resolved"))
    write_episodes(path, eps)
    return first_prompt + (turns - 1) * observation + turns * response


def _reinstate_before() -> None:
    """The code paths as they were before issue 33 (patched in this process only)."""
    import shutil

    from safetensors.torch import save_file

    from swe_aem import hostmem
    from swe_aem.train import model as engine
    from swe_aem.train import weights

    new_config = engine.deepspeed_config

    def old_config(s):
        cfg = new_config(s)
        for key in ("reduce_bucket_size", "allgather_bucket_size"):
            cfg["zero_optimization"].pop(key, None)
        return cfg

    def old_write(sd, folder, *extras):
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous().clone() for k, v in sd.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for extra in extras:
            extra.save_pretrained(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        return folder

    engine.deepspeed_config = old_config
    weights._write_folder = old_write
    hostmem.trim = lambda: None
    hostmem.limit_malloc_arenas = lambda arenas=None: False
    hostmem.map_large_allocations = lambda threshold=None: False


def child(arm: str, replay: Path, run_dir: Path, steps: int, extra: list[str]) -> dict:
    """One arm: the trainer on the replay, its peak RSS per phase (bytes)."""
    from swe_aem import hostmem

    if arm == "before":
        _reinstate_before()
    if arm == "heap":  # the code as it is but glibc's own, rising mmap threshold
        hostmem.map_large_allocations = lambda threshold=None: False
    meter = hostmem.PhaseMeter()
    with meter.phase("start (python, torch, deepspeed imported)"):
        from swe_aem.config import load_config
        from swe_aem.train import loop

    def wrap(owner, name: str, phase: str) -> None:
        fn = getattr(owner, name)

        def wrapped(*a, **kw):
            with meter.phase(phase):
                return fn(*a, **kw)
        setattr(owner, name, wrapped)

    wrap(loop, "load_model", "model load")
    wrap(loop, "build_engine", "DeepSpeed engine (optimizer, buckets)")
    wrap(loop, "forward_old", "forward_old")
    wrap(loop, "ppo_update", "update")
    wrap(loop.CheckpointManager, "save", "checkpoint")
    step = loop.Trainer.step

    def step_then_push(self):
        with meter.phase("step (batch, credit)"):
            out = step(self)
        with meter.phase("weight source for a push (safetensors write)"):
            self.publisher.save(self.engine, self.state.step)
        return out
    loop.Trainer.step = step_then_push

    overrides = ["model=tiny", f"run.replay={replay}", f"run.steps={steps}", "warm_start.enabled=false",
                 "heldout.split=null", "run.save_every=1", "rollout.tasks_per_step=1", "rollout.samples_per_task=2"]
    if arm == "before":
        overrides += ["trainer.gradient_checkpointing=false", "trainer.micro_batch_tokens=4096",
                      "trainer.zero_stage=2"]
    if arm == "zero2":  # issue 33's first cuts on ZeRO-2: its float32 master copy and gradient partition
        overrides += ["trainer.zero_stage=2"]
    cfg = load_config("rloo_aem", None, [*overrides, *extra])
    t0 = time.perf_counter()
    trainer = loop.Trainer(cfg, run_dir)
    trainer.train()
    wall = time.perf_counter() - t0
    with meter.phase("between steps (after trim)"):
        hostmem.trim()
        time.sleep(0.2)
    peaks = meter.close()
    return {"arm": arm, "peak_rss_by_phase": peaks, "vm_hwm": hostmem.peak_rss_bytes(), "wall_s": wall,
            "settings": {"gradient_checkpointing": trainer.settings.gradient_checkpointing,
                         "micro_batch_tokens": trainer.settings.micro_batch_tokens}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=2,
                   help="2 (default): the second step's update holds Adam's states, as every live step after the first does")
    p.add_argument("--arms", nargs="+", default=["before", "zero2", "after"], choices=["before", "zero2", "heap", "after"])
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every arm (e.g. trainer.logprob_chunk_size=256)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--replay", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--run-dir", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.replay, a.run_dir, a.steps, a.set)))
        return 0
    out: dict = {"bench": "train_memory", "target_peak_gib": 4.0, "steps": a.steps, "set": a.set, "arms": {}}
    with tempfile.TemporaryDirectory() as tmp:
        replay = Path(tmp) / "trajectories.jsonl"
        out["longest_sample_tokens"] = write_replay(replay)
        for arm in a.arms:
            proc = subprocess.run([sys.executable, __file__, "--child", arm, "--replay", str(replay),
                                   "--run-dir", str(Path(tmp) / arm), "--steps", str(a.steps),
                                   *(["--set", *a.set] if a.set else [])],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr[-4000:], file=sys.stderr)
                return 1
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            out["arms"][arm] = {
                "peak_rss_gib_by_phase": {k: round(v / GIB, 3) for k, v in res["peak_rss_by_phase"].items()},
                "vm_hwm_gib": round(res["vm_hwm"] / GIB, 3), "wall_s": round(res["wall_s"], 1),
                "settings": res["settings"]}
    if {"before", "after"} <= set(out["arms"]):
        b, f = out["arms"]["before"], out["arms"]["after"]
        out["after_over_before"] = {k: round(v / b["peak_rss_gib_by_phase"][k], 3)
                                    for k, v in f["peak_rss_gib_by_phase"].items()
                                    if b["peak_rss_gib_by_phase"].get(k)}
        out["vm_hwm_after_over_before"] = round(f["vm_hwm_gib"] / b["vm_hwm_gib"], 3)
        out["target_met"] = f["vm_hwm_gib"] < out["target_peak_gib"]
    if {"heap", "after"} <= set(out["arms"]):
        h, f = out["arms"]["heap"], out["arms"]["after"]
        out["after_over_heap"] = {k: round(v / h["peak_rss_gib_by_phase"][k], 3)
                                  for k, v in f["peak_rss_gib_by_phase"].items() if h["peak_rss_gib_by_phase"].get(k)}
        out["wall_after_over_heap"] = round(f["wall_s"] / h["wall_s"], 3)
        out["target_met"] = f["vm_hwm_gib"] < out["target_peak_gib"]
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
