"""`swe-aem plot RUN`: draw a training run's curves (metrics.jsonl) to PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a training run folder (holds metrics.jsonl)")
    p.add_argument("--out", type=Path, default=None, help="default: RUN/metrics.png")


def run(args: argparse.Namespace) -> int:
    from swe_aem.train.metrics import plot_run

    try:
        print(plot_run(args.run, args.out))
    except FileNotFoundError as exc:
        print(f"error: {exc}")
        return 1
    return 0
