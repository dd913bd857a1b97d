"""`swe-aem reproduce`: the DeepSWE recipe with and without AEM, evaluated and compared.

Both arms train from the same weights with the same seed and the same task
batches (batches are a pure function of step and seed), are evaluated with the
same settings, and the paired comparison is written next to the published
numbers (42.3 -> 43.7 Pass@1 on SWE-bench-Verified, Qwen3-32B). At MODEL=tiny
everything runs at toy size on CPU so the pipeline itself is exercised.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from swe_aem.commands.plan import add_cluster_arguments, check_before_launch
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
    add_cluster_arguments(p)  # the plan before the launch (swe-aem plan); default: this machine's GPUs
    p.add_argument("overrides", nargs="*", help="training config overrides for both arms, key=value")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swe_aem.config import load_config
    from swe_aem.eval.evaluate import EvalSettings, evaluate, write_rollout_report
    from swe_aem.eval.reproduction import write_reproduction
    from swe_aem.train.loop import Trainer

    scale = TOY if args.model == "tiny" else FULL
    out = args.out or Path("runs") / "reproduce" / Path(args.model).name
    settings = EvalSettings(runs=args.eval_runs or scale["eval_runs"], max_turns=scale["max_turns"],
                            max_new_tokens=scale["max_new_tokens"])
    only = [f"run.instance_ids=[{','.join(args.instances)}]"] if args.instances else []
    cfgs = {arm: load_config(recipe=recipe, overrides=[f"model={args.model}", *only, *args.overrides])
            for arm, recipe in zip(("base", "aem"), scale["recipes"])}
    if not check_before_launch(list(cfgs.values()), args, Console(stderr=True))[0]:
        return 1
    arms: dict[str, list[dict[str, bool]]] = {}
    for arm, cfg in cfgs.items():
        run_dir = out / arm
        Trainer(cfg, run_dir / "train", resume=(run_dir / "train" / "checkpoints").is_dir(),
                heldout_report=write_rollout_report).train()
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
