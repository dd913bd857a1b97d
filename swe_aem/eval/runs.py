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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from swe_aem.errors import InputError
from swe_aem.eval.estimators import Run
from swe_aem.jsonl import read_jsonl


class RunFormatError(InputError, ValueError):
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
    for where, row in read_jsonl(path, error=RunFormatError):
        if not isinstance(row, dict) or "instance_id" not in row:
            raise RunFormatError(f"{where}: row without 'instance_id'")
        key = "resolved" if "resolved" in row else "reward" if "reward" in row else None
        if key is None:
            raise RunFormatError(f"{where}: row without 'resolved' or 'reward'")
        iid = str(row["instance_id"])
        if iid in run:
            raise RunFormatError(f"{where}: instance {iid!r} appears twice")
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


class GradedSample(Protocol):
    """What a graded rollout sample carries (swe_aem.agent.trajectory.Episode has these)."""

    instance_id: str
    sample_index: int
    reward: float | None


def runs_from_samples(samples: Iterable[GradedSample], instance_ids: Sequence[str], n_runs: int) -> list[Run]:
    """k runs from k samples per instance: run j holds every instance's sample j.

    A sample that is missing (a lost episode) counts as unresolved, as the official report
    keeps errored instances in the denominator; an ungraded sample (reward None) is an error,
    since no resolve rate can be computed from it.
    """
    if n_runs < 1:
        raise ValueError(f"n_runs must be >= 1, got {n_runs}")
    known = set(instance_ids)
    runs: list[dict[str, bool]] = [dict.fromkeys(instance_ids, False) for _ in range(n_runs)]
    seen: set[tuple[str, int]] = set()
    for s in samples:
        key = (s.instance_id, s.sample_index)
        if s.instance_id not in known:
            raise ValueError(f"sample for unknown instance {s.instance_id!r}")
        if not 0 <= s.sample_index < n_runs:
            raise ValueError(f"{s.instance_id}: sample_index {s.sample_index} outside 0..{n_runs - 1}")
        if key in seen:
            raise ValueError(f"{s.instance_id}: sample {s.sample_index} appears twice")
        if s.reward is None:
            raise ValueError(f"{s.instance_id}: sample {s.sample_index} was never graded (reward None)")
        seen.add(key)
        runs[s.sample_index][s.instance_id] = s.reward >= 1.0
    return runs
