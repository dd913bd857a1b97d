"""`swe-aem eval`: roll out with evaluation settings, grade, and report resolve rates.

k runs are k samples per instance from one concurrent rollout; the statistics, the
predictions per run and the report are swe_aem/eval/evaluate.py's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from swe_aem.commands.agent_options import add_agent_arguments, agent_from_args
from swe_aem.data.families import FORMATS
from swe_aem.eval.evaluate import VERIFIED, EvalSettings, evaluate


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="preset, local model folder, or a run's final_model/")
    p.add_argument("--dataset", default=VERIFIED, help=f"default {VERIFIED}; 'local' for the local suite")
    p.add_argument("--dataset-format", default=None, choices=FORMATS, help="dataset family (default: from the name or the columns)")
    p.add_argument("--split", default="test")
    p.add_argument("--runs", type=int, default=1, help="k: independent runs (Pass@1 is averaged over them)")
    add_agent_arguments(p, EvalSettings().agent, concurrency=8, sample="run")
    p.add_argument("--instances", nargs="*", default=None, help="only these instance ids")
    p.add_argument("--created-after", default=None, metavar="DATE",
                   help="a decontaminated set: only tasks created after DATE (ISO 8601, UTC), for a model "
                        "whose training data ends then; refused on datasets whose rows carry no date")
    p.add_argument("--adapter", type=Path, default=None, metavar="DIR",
                   help="a peft LoRA adapter folder (a run's final_adapter/) served on --model as its base")
    p.add_argument("--server-url", default=None, help="use a running server instead of starting one")
    p.add_argument("--out", type=Path, default=None, help="default runs/eval/<model>")
    p.add_argument("--harness-dir", type=Path, default=None,
                   help="SWE-bench Pro: a checkout of scaleapi/SWE-bench_Pro-os, whose run_scripts/<instance_id>/"
                        "run_script.sh and parser.py run each row's tests instead of the project's own runners")


def run(args: argparse.Namespace) -> int:
    from swe_aem.data.pro_runners import use_harness_dir

    if args.runs < 1:
        print("error: --runs must be at least 1")
        return 2
    out = args.out or Path("runs") / "eval" / Path(args.model).name
    settings = EvalSettings(runs=args.runs, concurrency=args.concurrency,
                            agent=agent_from_args(args, EvalSettings().agent))
    try:
        if args.harness_dir is not None:  # read as SWE-bench Pro rows load (data/pro_runners.py)
            use_harness_dir(args.harness_dir)
        paths = evaluate(args.model, args.dataset, out, settings, split=args.split,
                         instance_ids=args.instances, server_url=args.server_url,
                         dataset_format=args.dataset_format, created_after=args.created_after,
                         adapter=args.adapter)
    except KeyError as exc:  # an unknown preset name; the project's own errors reach the CLI (errors.py)
        print(f"error: {exc.args[0] if exc.args else exc}")
        return 2
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
