"""`swe-aem compare RUN_A RUN_B`: is B's resolve rate really different from A's?

Paired over instances (both runs must cover the same instances): the difference with a
seeded paired bootstrap CI, the exact McNemar test, and which instances B won or lost
(swe_aem/eval/estimators.py, swe_aem/eval/compare.py). Writes compare.json and compare.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from swe_aem.eval.compare import comparison_markdown
from swe_aem.eval.estimators import paired_compare
from swe_aem.eval.runs import load_runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_a", type=Path, help="baseline run file (eval.json, report.json or JSONL)")
    parser.add_argument("run_b", type=Path, help="run file compared against the baseline")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="folder for compare.json / .md")
    parser.add_argument("--n-boot", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    name_a, name_b = str(args.run_a), str(args.run_b)
    try:
        c = paired_compare(
            load_runs(args.run_a), load_runs(args.run_b), name_a=name_a, name_b=name_b,
            n_boot=args.n_boot, seed=args.seed,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"swe-aem compare: {e}", file=sys.stderr)
        return 2
    md = comparison_markdown(c, name_a, name_b)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"run_a": name_a, "run_b": name_b, **c.to_dict()}
    (args.out / "compare.json").write_text(json.dumps(record, indent=1))
    (args.out / "compare.md").write_text(md)
    print(f"wrote {args.out / 'compare.json'}, {args.out / 'compare.md'}")
    return 0
