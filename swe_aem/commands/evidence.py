"""`swe-aem evidence`: GRPO vs GRPO+AEM on the guessing game, several seeds per arm.

The game's runs, summary and plots are swe_aem/evidence/run.py's; `--llm` runs the LLM
arm instead (swe_aem/evidence/llm.py). Writes evidence.json, evidence.md and the plots.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from swe_aem.config import ConfigError
from swe_aem.evidence.run import EvidenceConfig, quick_config, run_evidence

console = Console(stderr=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm", action="store_true",
                        help="the LLM arm: the real trainer from one SFT warm start, held-out resolve rates")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default runs/evidence, with --llm runs/evidence-llm)")
    parser.add_argument("--quick", action="store_true", help="CI-sized run (seconds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="the game: number of seeds per arm (>= 3); --llm: the seeds (default 0 1 2)")
    parser.add_argument("--steps", type=int, default=None, help="RL steps per run")
    parser.add_argument("--lam", type=float, default=None, help="AEM lambda of the AEM arm")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="parallel runs (processes)")
    parser.add_argument("overrides", nargs="*", help="--llm: training config overrides for both arms, key=value "
                             "(after `--` when they follow --seeds)")


def _usage_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the options for the arm asked for, if anything."""
    if args.steps is not None and args.steps < 1:
        return f"--steps must be >= 1, got {args.steps}"
    if args.llm:
        if args.quick or args.lam is not None:
            return "--quick and --lam are options of the game, not of --llm"
        if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
            return f"--seeds must be distinct, got {args.seeds}"
        return None
    if args.overrides:
        return f"config overrides need --llm, got {args.overrides}"
    if args.seeds is not None and (len(args.seeds) != 1 or args.seeds[0] < 3):
        return f"need one number of seeds per arm, at least 3, got {args.seeds}"
    return None


def run(args: argparse.Namespace) -> int:
    if (error := _usage_error(args)) is not None:
        print(f"swe-aem evidence: {error}", file=sys.stderr)
        return 2
    if args.llm:
        return run_llm(args)
    args.out = args.out or Path("runs/evidence")
    cfg = quick_config() if args.quick else EvidenceConfig()
    if args.seeds is not None:
        cfg = replace(cfg, seeds=tuple(range(args.seeds[0])))
    if args.steps is not None:
        cfg = replace(cfg, run=replace(cfg.run, steps=args.steps))
    if args.lam is not None:
        cfg = replace(cfg, lam=args.lam)
    rec = run_evidence(cfg, args.out, workers=args.workers)
    print((args.out / "evidence.md").read_text())
    print(f"wrote {args.out / 'evidence.json'}, {args.out / 'evidence.md'}, "
          + ", ".join(str(args.out / p) for p in rec["plots"]))
    return 0


def run_llm(args: argparse.Namespace) -> int:
    """`--llm`: the LLM arms (swe_aem/evidence/llm.py); errors of set-up or infrastructure
    end with a message and rc 1, a config error with rc 2."""
    from swe_aem.data.instances import DatasetError
    from swe_aem.eval.evaluate import EvalError
    from swe_aem.evidence.llm import base_config, run_llm_evidence, shared_warm_start
    from swe_aem.isolate import ChildDiedError
    from swe_aem.policy.models import ModelUnavailableError
    from swe_aem.sandbox import DockerUnavailableError
    from swe_aem.sft.warm_start import warm_start_errors
    from swe_aem.train.checkpoint import CheckpointError
    from swe_aem.train.rollouts import TrainingSetupError

    out = args.out or Path("runs/evidence-llm")
    failures = (TrainingSetupError, DatasetError, DockerUnavailableError, ModelUnavailableError,
                CheckpointError, EvalError, ChildDiedError)
    try:
        base = base_config(args.overrides)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    try:
        ws = shared_warm_start(base)
    except warm_start_errors() as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    try:
        run_llm_evidence(out, args.seeds or (0, 1, 2), args.steps, args.overrides, ws=ws, base=base)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    except failures as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    print((out / "evidence_llm.md").read_text())
    print(f"wrote {out / 'evidence_llm.json'}, {out / 'evidence_llm.md'}, {out / 'evidence_llm.png'}")
    return 0
