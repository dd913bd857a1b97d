"""`swe-aem generate`: regenerate the generated suite (procedural bugs, validated in containers).

The CLI half of swe_aem/data/generator.py: it joins the pure steps (candidates, issue
text, splits) with Docker (the per-repo images and one validation container per repo),
shows progress, and writes `train.jsonl`, `test.jsonl` and `stats.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from swe_aem.data import generator as gen
from swe_aem.sandbox.daemon import connect
from swe_aem.sandbox.image_store import console


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="seed of the bug tries and the split (default 0)")
    parser.add_argument("--out", type=Path, default=gen.GENERATED,
                        help=f"folder for train.jsonl / test.jsonl / stats.json (default {gen.GENERATED})")
    parser.add_argument("--repos", nargs="+", default=list(gen.REPOS), choices=list(gen.REPOS),
                        metavar="REPO", help="repos to generate from (default: all)")


def generate(seed: int, repos: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Candidates, validation and rows for `repos`; returns (rows, stats)."""
    start = time.monotonic()
    built = gen.build_images(connect())
    console.print(f"images: {len(built)} built, {len(repos) - len(built)} present")
    cands = []
    for repo in repos:
        found = gen.candidates(seed, [repo])
        console.print(f"{repo}: {len(found)} candidate bugs")
        cands += found
    rows: list[dict[str, Any]] = []
    counts: dict[str, Counter] = {"candidates": Counter(), "validated": Counter(),
                                  "candidates_by_kind": Counter(), "validated_by_kind": Counter(),
                                  "rejected": Counter()}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("validating", total=len(cands))
        for repo in repos:
            mine = [c for c in cands if c.repo == repo]
            progress.update(task, description=f"validating {repo}")
            clean, outcomes = gen.validate_repo(gen.repo_image(repo), mine,
                                                on_done=lambda c: progress.advance(task))
            for cand in mine:
                outcome = outcomes[cand.instance_id]
                f2p, p2p = gen.classify(clean, outcome)
                counts["candidates"][repo] += 1
                counts["candidates_by_kind"][cand.kind] += 1
                if not outcome.applied:
                    counts["rejected"]["does not apply"] += 1
                elif outcome.timed_out:
                    counts["rejected"]["tests time out or crash"] += 1
                elif not f2p:
                    counts["rejected"]["no FAIL_TO_PASS"] += 1
                elif (row := gen.make_row(cand, f2p, p2p, outcome.messages, seed)) is None:
                    counts["rejected"]["issue text would quote the change"] += 1
                else:
                    counts["validated"][repo] += 1
                    counts["validated_by_kind"][cand.kind] += 1
                    rows.append(row)
    stats = {"seed": seed, "wall_s": round(time.monotonic() - start, 1),
             **{k: dict(sorted(v.items())) for k, v in counts.items()}}
    return rows, stats


def run(args: argparse.Namespace) -> int:
    rows, stats = generate(args.seed, args.repos)
    splits = gen.split_rows(rows, args.seed)
    gen.write_splits(splits, args.out)
    stats["splits"] = {name: len(part) for name, part in splits.items()}
    stats["functions"] = {name: len({r["unit"] for r in part}) for name, part in splits.items()}
    (args.out / "stats.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    console.print(json.dumps(stats, indent=2, sort_keys=True))
    console.print(f"wrote {sum(stats['splits'].values())} instances to {args.out} in {stats['wall_s']} s")
    return 0
