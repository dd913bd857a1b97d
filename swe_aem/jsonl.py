"""The project's one JSONL reader and writer (trajectories, predictions, datasets, metrics, runs).

Every reader names the file and line of a bad row, so a malformed record is found
at once instead of surfacing as a wrong statistic later.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


def write_jsonl(path: str | Path, rows: Iterable[Any], *, append: bool = False,
                compact: bool = False) -> None:
    """One JSON object a line; `append` adds to the file (a crash loses only the row in flight);
    `compact`: no space after `,` and `:` (a byte less per list entry, for long number lists)."""
    separators = (",", ":") if compact else None
    with Path(path).open("a" if append else "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(row, separators=separators) + "\n" for row in rows)


@dataclass(frozen=True)
class JsonlLine:
    """One line of a JSONL file as a tolerant reader sees it: where it starts (a byte offset
    a later read can seek to), its length in bytes (newline included) and its row, or why
    there is none (`error`): a malformed line, or the last line still being written."""

    line: int
    offset: int
    length: int
    row: Any = None
    error: str | None = None


def scan_jsonl(path: str | Path, start: int = 0, first_line: int = 1) -> Iterator[JsonlLine]:
    """Every non-blank line from byte `start` on, never raising on a bad one: a viewer of a
    run still being written shows a malformed or half-written line as such, and the lines
    around it. A last line without its newline is reported half-written (its writer may be
    mid-row), so a later scan from its offset reads it again. `first_line`: the number of
    the line at `start` (for a scan that resumes)."""
    path = Path(path)
    with path.open("rb") as fh:
        fh.seek(start)
        offset, n = start, first_line
        for raw in fh:
            size = len(raw)
            if raw.strip():
                if not raw.endswith(b"\n"):
                    yield JsonlLine(n, offset, size, error="half-written line (no newline yet)")
                    return
                try:
                    yield JsonlLine(n, offset, size, row=json.loads(raw))
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                    yield JsonlLine(n, offset, size, error=f"{path}:{n}: not valid JSON: {msg}")
            offset, n = offset + size, n + 1


def read_jsonl_at(path: str | Path, offset: int, *, error: type[Exception] = ValueError) -> Any:
    """The row of the line starting at byte `offset` (from a `scan_jsonl` index)."""
    with Path(path).open("rb") as fh:
        fh.seek(offset)
        raw = fh.readline()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} at byte {offset}: not valid JSON: {exc}") from None
