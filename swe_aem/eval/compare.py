"""`swe-aem compare RUN_A RUN_B`: is B's resolve rate really different from A's?

Paired over instances (both runs must cover the same instances): the difference with a
seeded paired bootstrap CI, the exact McNemar test, and which instances B won or lost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from swe_aem.eval.estimators import Comparison, paired_compare
from swe_aem.eval.runs import load_runs


def comparison_markdown(c: Comparison, name_a: str, name_b: str, max_ids: int = 50) -> str:
    """Markdown summary of a paired comparison (rates in percent)."""
    lvl = f"{100 * c.ci_level:.0f}%"

    def ids(xs: list[str]) -> str:
        more = f" ... (+{len(xs) - max_ids} more)" if len(xs) > max_ids else ""
        return (", ".join(f"`{x}`" for x in xs[:max_ids]) + more) if xs else "none"

    return "\n".join([
        f"## {name_b} vs {name_a}",
        "",
        f"{c.n_instances} instances, paired; {c.runs_a} run(s) of A, {c.runs_b} run(s) of B.",
        "",
        "| | resolve rate (%) |",
        "|---|---|",
        f"| A: {name_a} | {100 * c.rate_a:.2f} |",
        f"| B: {name_b} | {100 * c.rate_b:.2f} |",
        f"| B - A | {100 * c.diff:+.2f} |",
        (f"| {lvl} CI (paired bootstrap over instances, {c.n_boot} resamples, seed {c.seed}) | "
        f"[{100 * c.diff_ci[0]:+.2f}, {100 * c.diff_ci[1]:+.2f}] |"),
        f"| exact McNemar p ({len(c.wins)} wins / {len(c.losses)} losses) | {c.mcnemar_p:.4g} |",
        "",
        f"Wins of B ({len(c.wins)}): {ids(c.wins)}",
        "",
        f"Losses of B ({len(c.losses)}): {ids(c.losses)}",
        "",
    ])


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
