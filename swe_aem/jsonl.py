"""The project's one JSONL reader and writer (trajectories, predictions, datasets, metrics, runs).

Every reader names the file and line of a bad row, so a malformed record is found
at once instead of surfacing as a wrong statistic later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path, *, error: type[Exception] = ValueError) -> Iterator[tuple[str, Any]]:
    """(where, row) for every non-blank line, where = "PATH:LINE".

    A missing file or a line that is not JSON raises `error` (the caller's own error
    type) with the place named.
    """
    path = Path(path)
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None
    with fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{path}:{n}: not valid JSON: {exc.msg} (column {exc.colno})") from None
            yield f"{path}:{n}", row


def write_jsonl(path: str | Path, rows: Iterable[Any], *, append: bool = False) -> None:
    """One JSON object a line; `append` adds to the file (a crash loses only the row in flight)."""
    with Path(path).open("a" if append else "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row) + "\n" for row in rows)
