"""Reading graded runs from disk: one file may hold one run or several.

Accepted shapes, so results from our own grader, the official harness and hand-made
tables all feed the same statistics:
- a SWE-bench run report (`report.json` of `swebench.harness.run_evaluation` or
  `swe-aem grade`): `resolved_ids` plus `submitted_ids` (and `incomplete_ids`, the
  dataset instances that got no prediction and count as unresolved);
- an eval result written by `write_eval_result` (`{"runs": [{id: bool}, ...], ...}`);
- a plain mapping `{instance_id: bool}`;
- JSONL rows `{"instance_id": ..., "resolved": bool}` (or `"reward": 0/1`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from swe_aem.eval.metrics import Run


class RunFormatError(ValueError):
    """A run file that cannot be read as per-instance resolved booleans."""


def _as_bool(path: Path, key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise RunFormatError(f"{path}: instance {key!r} has resolved={value!r}; expected a bool or 0/1")


def _from_swebench_report(path: Path, d: Mapping) -> Run:
    for key in ("resolved_ids", "submitted_ids"):
        if not isinstance(d.get(key), list):
            raise RunFormatError(f"{path}: SWE-bench report without a list {key!r}")
    resolved = set(d["resolved_ids"])
    universe = set(d["submitted_ids"]) | set(d.get("incomplete_ids") or [])
    if not resolved <= universe:
        raise RunFormatError(
            f"{path}: resolved ids not among submitted ids: {sorted(resolved - universe)[:10]}"
        )
    total = d.get("total_instances")
    if "incomplete_ids" in d and isinstance(total, int) and total != len(universe):
        raise RunFormatError(
            f"{path}: total_instances={total} but submitted + incomplete ids give {len(universe)}"
        )
    return {i: i in resolved for i in sorted(universe)}


def _from_mapping(path: Path, d: Mapping) -> Run:
    if not d:
        raise RunFormatError(f"{path}: empty run")
    return {str(k): _as_bool(path, str(k), v) for k, v in d.items()}


def _from_jsonl(path: Path) -> Run:
    run: dict[str, bool] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise RunFormatError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or "instance_id" not in row:
            raise RunFormatError(f"{path}:{n}: row without 'instance_id'")
        key = "resolved" if "resolved" in row else "reward" if "reward" in row else None
        if key is None:
            raise RunFormatError(f"{path}:{n}: row without 'resolved' or 'reward'")
        iid = str(row["instance_id"])
        if iid in run:
            raise RunFormatError(f"{path}:{n}: instance {iid!r} appears twice")
        run[iid] = _as_bool(path, iid, row[key])
    if not run:
        raise RunFormatError(f"{path}: no rows")
    return run


def load_runs(path: str | Path) -> list[Run]:
    """All runs stored in `path` (a list of one run for single-run formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run file not found: {path}")
    if path.suffix == ".jsonl":
        return [_from_jsonl(path)]
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunFormatError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(d, dict):
        raise RunFormatError(f"{path}: expected a JSON object, got {type(d).__name__}")
    if "resolved_ids" in d:
        return [_from_swebench_report(path, d)]
    if "runs" in d:
        runs = d["runs"]
        if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
            raise RunFormatError(f"{path}: 'runs' must be a non-empty list of {{instance_id: bool}}")
        return [_from_mapping(path, r) for r in runs]
    return [_from_mapping(path, d)]
