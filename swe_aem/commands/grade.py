"""`swe-aem grade`: grade official-format predictions, one fresh container each.

Writes R/logs/<instance_id>/ and R/report.json (swe_aem/reward/predictions_grading.py:
the official report's keys plus resolve_rate and a per-instance status and reason) and
prints the report's counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from swe_aem.data import DatasetError, load_instances
from swe_aem.data.families import FORMATS, FormatError
from swe_aem.data.pro_runners import use_harness_dir
from swe_aem.reward.predictions_grading import grade_predictions, load_predictions
from swe_aem.reward.swebench_pro import default_timeout
from swe_aem.sandbox import DockerUnavailableError

console = Console(stderr=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help='"local", a .jsonl/.json/.parquet file or a hub name')
    parser.add_argument("--dataset-format", default=None, choices=FORMATS, help="dataset family (default: from the name or the columns)")
    parser.add_argument("--predictions", required=True, help="official predictions JSONL")
    parser.add_argument("--report-dir", required=True, type=Path)
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-workers", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds for one eval script (default 1800; 3600 with SWE-bench Pro rows, its harness's limit)")
    parser.add_argument("--harness-dir", type=Path, default=None,
                        help="SWE-bench Pro: a checkout of scaleapi/SWE-bench_Pro-os, whose run_scripts/<instance_id>/"
                             "run_script.sh and parser.py run each row's tests instead of the project's own runners")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--strict", action="store_true",
                        help="also refuse patches that edit tests or test config (training's reward)")
    parser.add_argument("--docker-host", action="append", default=None,
                        help="DOCKER_HOST URL; repeat to spread over several daemons")


def run(args: argparse.Namespace) -> int:
    try:
        predictions = load_predictions(args.predictions)
        if args.harness_dir is not None:  # read as SWE-bench Pro rows load (data/pro_runners.py)
            use_harness_dir(args.harness_dir)
        instances = load_instances(args.dataset, split=args.split, dataset_format=args.dataset_format)
        timeout = args.timeout if args.timeout is not None else default_timeout(instances, 1800.0)
        report = grade_predictions(
            instances, predictions, args.report_dir, max_workers=args.max_workers, timeout=timeout,
            run_id=args.run_id, strict=args.strict, docker_hosts=args.docker_host)
    except (DatasetError, DockerUnavailableError, FormatError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    summary = {k: v for k, v in report.items() if not k.endswith("_ids") and k != "instances"}
    print(json.dumps(summary, indent=2))
    console.print(f"report: {args.report_dir / 'report.json'}")
    return 0
