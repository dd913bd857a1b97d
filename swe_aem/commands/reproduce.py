"""`swe-aem reproduce`: the DeepSWE recipe with and without AEM, evaluated and compared.

Both arms train from the same weights with the same seed and the same task
batches (batches are a pure function of step and seed), are evaluated with the
same settings, and the paired comparison is written next to the published
numbers (42.3 -> 43.7 Pass@1 on SWE-bench-Verified, Qwen3-32B). At MODEL=tiny
everything runs at toy size on CPU so the pipeline itself is exercised.

Each arm trains in a `swe-aem train` of its own, with this command's launch flags
(--hostfile, --nproc, --launcher, ...): on a cluster the ranks are launched exactly as a
lone training run's. One arm's processes are all gone before the next arm starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from swe_aem.commands.plan import check_before_launch
from swe_aem.commands.train import add_launch_arguments, launch_flags
from swe_aem.data.families import FORMATS

TOY = {"recipes": ("deepswe_tiny", "deepswe_tiny_aem"), "eval_runs": 2, "dataset": "local",
       "max_turns": 2, "max_new_tokens": 64}
FULL = {"recipes": ("deepswe", "deepswe_aem"), "eval_runs": 16, "dataset": "SWE-bench/SWE-bench_Verified",
        "max_turns": 100, "max_new_tokens": 8192}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="tiny (toy scale on CPU) or a GPU preset such as qwen3-32b")
    p.add_argument("--out", type=Path, default=None, help="default runs/reproduce/<model>")
    p.add_argument("--eval-runs", type=int, default=None, help="default 16 (2 at toy size)")
    p.add_argument("--dataset", default=None, help="evaluation dataset (default: Verified; local at toy size)")
    p.add_argument("--dataset-format", default=None, choices=FORMATS, help="dataset family (default: from the name or the columns)")
    p.add_argument("--instances", nargs="*", default=None,
                   help="train and evaluate on these instance ids only (default: all)")
    add_launch_arguments(p)  # each arm's `swe-aem train` gets them: its ranks are launched as train's
    p.add_argument("overrides", nargs="*", help="training config overrides for both arms, key=value")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swe_aem.config import load_config
    from swe_aem.eval.evaluate import EvalSettings, evaluate
    from swe_aem.eval.reproduction import write_reproduction

    scale = TOY if args.model == "tiny" else FULL
    out = args.out or Path("runs") / "reproduce" / Path(args.model).name
    settings = EvalSettings(runs=args.eval_runs or scale["eval_runs"], agent=dataclasses.replace(
        EvalSettings().agent, max_turns=scale["max_turns"], max_new_tokens=scale["max_new_tokens"]))
    only = [f"run.instance_ids=[{','.join(args.instances)}]"] if args.instances else []
    overrides = [f"model={args.model}", *only, *args.overrides]
    recipes = dict(zip(("base", "aem"), scale["recipes"]))
    cfgs = {arm: load_config(recipe=recipe, overrides=overrides) for arm, recipe in recipes.items()}
    console = Console(stderr=True)
    if not check_before_launch(list(cfgs.values()), args, console, hostfile=args.hostfile)[0]:
        return 1
    # SIGTERM (a scheduler) unwinds like Ctrl-C: the running arm's processes are ended
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    arms: dict[str, list[dict[str, bool]]] = {}
    for arm, recipe in recipes.items():
        run_dir = out / arm
        cmd = arm_command(recipe, run_dir / "train", args, overrides)
        console.print(f"{arm} arm: {' '.join(cmd)}", markup=False, highlight=False, soft_wrap=True)
        code = run_arm(cmd)
        if code != 0:
            console.print(f"[red]error:[/red] the {arm} arm's training exited with code {code} "
                          f"(its run folder: {run_dir / 'train'})")
            return 1
        paths = evaluate(str(run_dir / "train" / "final_model"), args.dataset or scale["dataset"],
                         run_dir / "eval", settings, split="test", instance_ids=args.instances,
                         dataset_format=args.dataset_format)
        arms[arm] = [dict(r) for r in json.loads(paths["json"].read_text())["runs"]]
    meta = {"model": args.model, "recipes": list(scale["recipes"]), "eval_runs": settings.runs,
            "overrides": list(args.overrides), "instances": args.instances or "all",
            "scale": "toy (CPU, pipeline check only)" if scale is TOY else "full"}
    paths = write_reproduction(out, arms["base"], arms["aem"], meta=meta)
    print(paths["markdown"].read_text())
    return 0


def arm_command(recipe: str, run_dir: Path, args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """`swe-aem train` for one arm: its recipe and run folder (resumed when it holds
    checkpoints), this command's launch flags, the overrides both arms share."""
    resume = ["--resume"] if (run_dir / "checkpoints").is_dir() else []
    return [sys.executable, "-m", "swe_aem.cli", "train", "--recipe", recipe, "--run-dir", str(run_dir),
            *resume, *launch_flags(args), *overrides]


def run_arm(cmd: list[str], stop_timeout_s: float = 30.0) -> int:
    """Run one arm's training as a process group of its own (the launcher re-executes in
    place, its ranks join the group) and wait for it; then, and on an error or Ctrl-C, end
    whatever of the group is left (SIGTERM, SIGKILL after stop_timeout_s) and wait until
    none of it runs, so the next arm starts alone. Ranks the DeepSpeed launcher starts on
    other nodes (over pdsh) are the launcher's to end: untested here (one machine)."""
    from swe_aem.policy.server import end_group

    # a process that once trained in place carries RANK/LOCAL_RANK: `swe-aem train` would
    # take it for a launched rank and skip the launch
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        return proc.wait()
    finally:
        end_group(proc, stop_timeout_s)
