"""`swe-aem report`: render run files (eval.json, SWE-bench report.json files, per-instance
JSONL) as one result: eval.json, eval.md and eval.png (swe_aem/eval/report.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from swe_aem.eval.estimators import Run
from swe_aem.eval.report import write_eval_result
from swe_aem.eval.runs import load_runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, help="eval.json, SWE-bench report.json or JSONL run files")
    parser.add_argument("--out", type=Path, default=Path("runs/report"), help="output folder")
    parser.add_argument("--title", default="Evaluation")
    parser.add_argument("--n-boot", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    try:
        runs: list[Run] = [r for p in args.runs for r in load_runs(p)]
        paths = write_eval_result(
            args.out, runs, meta={"sources": [str(p) for p in args.runs]}, title=args.title,
            n_boot=args.n_boot, seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"swe-aem report: {e}", file=sys.stderr)
        return 2
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
