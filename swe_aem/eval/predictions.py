"""Predictions in the official SWE-bench format, so `swebench.harness.run_evaluation`
accepts our files unchanged: JSONL, one object per instance with exactly
`instance_id`, `model_name_or_path` and `model_patch` (an empty patch means "no answer").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from swe_aem.jsonl import read_jsonl


@dataclass(frozen=True)
class Prediction:
    instance_id: str
    model_name_or_path: str
    model_patch: str

    def __post_init__(self) -> None:
        if not isinstance(self.instance_id, str) or not self.instance_id:
            raise ValueError(f"prediction needs a non-empty instance_id, got {self.instance_id!r}")
        if not isinstance(self.model_name_or_path, str) or not self.model_name_or_path:
            raise ValueError(f"{self.instance_id}: model_name_or_path must be a non-empty string")
        if not isinstance(self.model_patch, str):  # a TypeError would escape callers' ValueError handling
            raise ValueError(  # noqa: TRY004
                f"{self.instance_id}: model_patch must be a string (use '' for no patch), "
                f"got {type(self.model_patch).__name__}"
            )


def write_predictions(path: str | Path, predictions: Iterable[Prediction]) -> Path:
    """Write predictions as JSONL (written to a temp file, then renamed: never half a file)."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"predictions path must end in .jsonl (the harness reads by suffix): {path}")
    rows, seen = [], set()
    for p in predictions:
        if p.instance_id in seen:
            raise ValueError(f"two predictions for instance {p.instance_id!r}")
        seen.add(p.instance_id)
        rows.append(json.dumps(asdict(p)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    tmp.replace(path)
    return path


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read a predictions JSONL back, with the line number of any bad row in the error."""
    out = []
    for where, row in read_jsonl(path):
        try:
            out.append(Prediction(row["instance_id"], row["model_name_or_path"], row["model_patch"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: bad prediction row: {e!r}") from None
    return out
