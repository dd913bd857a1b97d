"""Grade official-format predictions, one fresh container each (the library of `swe-aem grade`).

Writes R/logs/<instance_id>/ (patch.diff, eval.sh, test_output.txt, report.json,
run_instance.log) and R/report.json with the official report's keys plus
resolve_rate (resolved / total_instances, as SWE-bench counts it) and a
per-instance status and reason.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from swe_aem.data import DatasetError, Instance
from swe_aem.jsonl import read_jsonl
from swe_aem.reward.grading import ERROR_STATUSES, GradeResult, grade_patch
from swe_aem.sandbox import DockerUnavailableError, SandboxConfig, SandboxPool

console = Console(stderr=True)
PREDICTION_FIELDS = ("instance_id", "model_name_or_path", "model_patch")


def load_predictions(path: str | Path) -> dict[str, dict[str, Any]]:
    """Official predictions (JSONL, or a JSON list/dict), validated row by row."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"predictions file {path} does not exist")
    if path.suffix == ".jsonl":
        rows = list(read_jsonl(path, error=DatasetError))
    else:
        data = json.loads(path.read_text())
        data = list(data.values()) if isinstance(data, dict) else data
        rows = [(f"{path}[{i}]", row) for i, row in enumerate(data)]
    predictions: dict[str, dict[str, Any]] = {}
    for where, row in rows:
        if not isinstance(row, dict):
            raise DatasetError(f"{where}: a prediction must be an object")
        for name in PREDICTION_FIELDS:
            if name not in row:
                raise DatasetError(f"{where}: prediction lacks field {name!r}")
        if row["model_patch"] is not None and not isinstance(row["model_patch"], str):
            raise DatasetError(f"{where}: model_patch must be a string or null")
        if row["instance_id"] in predictions:
            raise DatasetError(f"{where}: second prediction for {row['instance_id']!r}")
        predictions[row["instance_id"]] = row
    return predictions


def make_report(instances: list[Instance], predictions: dict[str, dict[str, Any]],
                results: dict[str, GradeResult], unstopped: list[str]) -> dict[str, Any]:
    """The official report's counts and id lists, plus resolve_rate and per-instance results."""
    ids = {inst.instance_id for inst in instances}
    by_status: dict[str, list[str]] = {}
    for iid, result in results.items():
        by_status.setdefault(result.status, []).append(iid)
    empty = sorted(by_status.get("empty_patch", []))
    errors = sorted(i for s in ERROR_STATUSES for i in by_status.get(s, []))
    resolved = sorted(by_status.get("resolved", []))
    unresolved = sorted(by_status.get("unresolved", []) + by_status.get("rejected", []))
    completed = sorted(resolved + unresolved)
    return {
        "total_instances": len(instances),
        "submitted_instances": len(predictions),
        "completed_instances": len(completed),
        "resolved_instances": len(resolved),
        "unresolved_instances": len(unresolved),
        "empty_patch_instances": len(empty),
        "error_instances": len(errors),
        "completed_ids": completed,
        "incomplete_ids": sorted(ids - set(predictions)),
        "empty_patch_ids": empty,
        "submitted_ids": sorted(predictions),
        "resolved_ids": resolved,
        "unresolved_ids": unresolved,
        "error_ids": errors,
        "unstopped_containers": unstopped,
        "resolve_rate": len(resolved) / len(instances) if instances else 0.0,
        "instances": {iid: results[iid].to_json() for iid in sorted(results)},
    }


def grade_predictions(instances: list[Instance], predictions: dict[str, dict[str, Any]],
                      report_dir: Path, *, max_workers: int = 4, timeout: float = 1800.0,
                      run_id: str | None = None, strict: bool = False,
                      docker_hosts: list[str] | None = None,
                      config: SandboxConfig | None = None, max_retries: int = 1) -> dict[str, Any]:
    """Grade every prediction (bounded by max_workers), write logs and report.json; return the report."""
    known = {inst.instance_id: inst for inst in instances}
    unknown = sorted(set(predictions) - set(known))
    if unknown:
        raise DatasetError(f"predictions for instances not in the dataset: {', '.join(unknown)}")
    run_id = run_id or uuid.uuid4().hex[:10]
    report_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, GradeResult] = {}
    with SandboxPool(docker_hosts, max_concurrency=max_workers, config=config, run_id=run_id) as pool:
        pool.check()  # fail fast, with a clear error, when no daemon answers

        def one(iid: str) -> GradeResult:
            pred = predictions[iid]
            for _ in range(max_retries + 1):  # an infrastructure failure is graded again
                result = grade_patch(known[iid], pred["model_patch"], strict=strict, timeout=timeout,
                                     pool=pool, log_dir=report_dir / "logs" / iid,
                                     model_name=pred["model_name_or_path"])
                if not result.infra_failure:
                    break
            return result

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as progress, \
                ThreadPoolExecutor(max_workers) as executor:
            task = progress.add_task("grading", total=len(predictions))
            futures = {executor.submit(one, iid): iid for iid in sorted(predictions)}
            for future in as_completed(futures):
                iid = futures[future]
                try:
                    results[iid] = future.result()
                except DockerUnavailableError:
                    raise
                except Exception as exc:  # noqa: BLE001 - one odd instance must not lose the others
                    results[iid] = GradeResult(iid, 0.0, False, "error", f"{type(exc).__name__}: {exc}")
                resolved = sum(r.resolved for r in results.values())
                progress.update(task, advance=1, description=f"grading ({resolved} resolved)")
        unstopped = pool.close()  # anything still there at this point was left behind
    report = make_report(instances, predictions, results, unstopped)
    (report_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
