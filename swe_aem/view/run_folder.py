"""What the viewer shows, read from a run folder: the run, an episode index, one episode.

A folder is one of three kinds, told apart by what it holds:
- a training run (`metrics.jsonl`, `config.yaml`): its steps' `trajectories/step-N.jsonl`
  (a replay run has none: each step's episodes are those of the replay file, `run.replay`
  in config.yaml, whose tasks the step's credit record names), the per-turn credit record
  `credit/step-N.jsonl` (swe_aem/train/credit_log.py), the held-out reports under `heldout/`;
- a `swe-aem eval` report (`eval.json`, `trajectories.jsonl`);
- a `swe-aem rollout` output (`trajectories.jsonl`, `summary.json`).

Episodes are never loaded whole: each trajectory file is indexed once by byte offset (a
summary of each line: task, sample, reward, finish, turns, tokens, policy versions), and
an episode is read from its offset when the page opens it, token ids left out. A file that
grows (a live run) is scanned on from where the last scan stopped. A malformed or
half-written line is kept in the index as such (`error`), never dropped or fatal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from swe_aem.errors import InputError
from swe_aem.jsonl import JsonlLine, read_jsonl_at, scan_jsonl

# swe_aem.algo.aem.SPAN_EPS (not imported: the viewer stays free of torch): a group whose
# entropy range is at most max(min_range, this) gets alpha = 1 everywhere
SPAN_EPS = 1e-6
TOKEN_FIELDS = ("prompt_ids", "response_ids", "logprobs")
CREDIT_DIR = "credit"  # swe_aem.train.credit_log.CREDIT_DIR: the record's folder in a run


class ViewError(InputError, ValueError):
    """The folder is not one the viewer can show (named, with what it lacks)."""


def episode_summary(row: Any) -> dict[str, Any]:
    """One table row of an episode record (a raw dict of the trajectory format)."""
    if not isinstance(row, dict) or "instance_id" not in row:
        return {"error": "not an episode record (no instance_id)"}
    turns = [t for t in row.get("turns") or [] if isinstance(t, dict)]
    versions = [int(t.get("policy_version", 0)) for t in turns]
    return {
        "task": str(row["instance_id"]), "sample": row.get("sample_index"), "reward": row.get("reward"),
        "termination": row.get("termination"), "grade_status": row.get("grade_status"),
        "turns": len(turns), "tokens": sum(len(t.get("response_ids") or []) for t in turns),
        "prompt_tokens": sum(len(t.get("prompt_ids") or []) for t in turns),
        "versions": [min(versions), max(versions)] if versions else None,
        "tool_errors": sum(bool(t.get("tool_error")) for t in turns),
        "wall_s": row.get("wall_s"),
    }


def strip_tokens(row: dict[str, Any]) -> dict[str, Any]:
    """An episode record without its token ids and log-probs (their counts kept): what the
    page needs to show it, a small fraction of the record."""
    out = dict(row)
    turns = []
    for t in row.get("turns") or []:
        t = dict(t)
        t["n_prompt"] = len(t.get("prompt_ids") or [])
        t["n_response"] = len(t.get("response_ids") or [])
        for name in TOKEN_FIELDS:
            t.pop(name, None)
        turns.append(t)
    out["turns"] = turns
    return out


def group_stats(rows: list[dict[str, Any]], *, min_range: float | None, level: str = "turn",
                aem: bool = True) -> dict[str, dict[str, Any]]:
    """Per task of a step, from its credit rows: the entropy range AEM normalised over (the
    unmasked turns at turn level; each unmasked trajectory's token-weighted mean at trajectory
    level) against its floor, and whether AEM acted (a range above max(floor, SPAN_EPS)).
    Pure: the rows of `credit/step-N.jsonl` in, one dict per task out."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_task.setdefault(str(r["task"]), []).append(r)
    floor = float(min_range or 0.0)
    out = {}
    for task, rs in by_task.items():
        used = [r for r in rs if not r.get("masked")]
        if level == "trajectory":
            per: dict[Any, list[float]] = {}
            for r in used:
                acc = per.setdefault(r["sample"], [0.0, 0.0])
                acc[0] += r["entropy"] * r["tokens"]
                acc[1] += r["tokens"]
            values = [h / w for h, w in per.values() if w > 0]
        else:
            values = [r["entropy"] for r in used]
        lo, hi = (min(values), max(values)) if values else (None, None)
        span = hi - lo if values else 0.0
        out[task] = {"lo": lo, "hi": hi, "range": span, "floor": floor, "level": level,
                     "active": bool(aem and values and span > max(floor, SPAN_EPS)),
                     "samples": sorted({r["sample"] for r in rs}, key=lambda s: (s is None, s)),
                     "alpha_min": min(r["alpha"] for r in rs), "alpha_max": max(r["alpha"] for r in rs)}
    return out


@dataclass
class FileIndex:
    """The incremental byte-offset index of one JSONL file: a summary of each line."""

    path: Path
    summarize: Any = episode_summary
    entries: list[dict[str, Any]] = field(default_factory=list)
    _stat: tuple[int, int] = (-1, 0)
    _resume: tuple[int, int] = (0, 1)  # (offset, line number) the next scan starts at

    def refresh(self) -> bool:
        """Scan what was added since the last call; True when the index changed."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            changed = bool(self.entries)
            self.entries, self._stat, self._resume = [], (-1, 0), (0, 1)
            return changed
        stat = (st.st_size, st.st_mtime_ns)
        if stat == self._stat:
            return False
        if st.st_size < self._resume[0] or st.st_size < self._stat[0]:  # rewritten: from the top
            self.entries, self._resume = [], (0, 1)
        if self.entries and self.entries[-1].get("half_written"):
            self.entries.pop()  # read again: its writer may have finished it
        self._stat = stat
        for ln in scan_jsonl(self.path, *self._resume):
            entry = self._entry(ln)
            self.entries.append(entry)
            # a half-written line is read again next time, from its own offset
            self._resume = (ln.offset, ln.line) if entry.get("half_written") else (ln.offset + ln.length,
                                                                                  ln.line + 1)
        return True

    def _entry(self, ln: JsonlLine) -> dict[str, Any]:
        base = {"offset": ln.offset, "line": ln.line}
        if ln.error is not None:
            return {**base, "error": ln.error, "half_written": ln.error.startswith("half-written")}
        return {**base, **self.summarize(ln.row)}

    def read(self, offset: int) -> Any:
        return read_jsonl_at(self.path, offset, error=ViewError)


@dataclass
class EpisodeSet:
    """Episodes the table shows together: one training step's, a held-out evaluation's, an
    eval report's. `tasks`: only these tasks of the file (a replay run's step)."""

    id: str  # safe in a file name
    label: str
    index: FileIndex
    step: int | None = None
    tasks: frozenset[str] | None = None

    def entries(self) -> list[dict[str, Any]]:
        if self.tasks is None:
            return self.index.entries
        return [e for e in self.index.entries if "error" in e or e.get("task") in self.tasks]


def _read_yaml(path: Path) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        return {}, ""
    text = path.read_text(errors="replace")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}, text
    return (data if isinstance(data, dict) else {}), text


def _scan_rows(path: Path) -> tuple[list[Any], list[str]]:
    """Every good row of a JSONL file and the problems of the bad ones (never raising)."""
    rows, bad = [], []
    if not path.is_file():
        return rows, bad
    for ln in scan_jsonl(path):
        if ln.error is None:
            rows.append(ln.row)
        else:
            bad.append(f"{path.name}:{ln.line}: {ln.error}")
    return rows, bad


def _step_of(path: Path) -> int | None:
    try:
        return int(path.stem.removeprefix("step-"))
    except ValueError:
        return None


class RunSource:
    """One run folder as the viewer sees it; `refresh()` picks up what a live run added."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise ViewError(f"{folder} is not a folder (give a run folder, an eval report or a rollout output)")
        f = self.folder
        if (f / "metrics.jsonl").is_file() or (f / "config.yaml").is_file():
            self.kind = "train"
        elif (f / "eval.json").is_file():
            self.kind = "eval"
        elif (f / "trajectories.jsonl").is_file():
            self.kind = "rollout"
        else:
            raise ViewError(f"{folder} holds none of metrics.jsonl / config.yaml (a training run), "
                            "eval.json (a swe-aem eval report) or trajectories.jsonl (a swe-aem rollout)")
        self._files: dict[Path, FileIndex] = {}
        self._credit: dict[int, tuple[tuple[int, int], list[dict[str, Any]], list[str]]] = {}
        self.refresh()

    # ------------------------------------------------------------------ reading
    def _file(self, path: Path) -> FileIndex:
        if path not in self._files:
            self._files[path] = FileIndex(path)
        return self._files[path]

    def refresh(self) -> None:
        self.config, self.config_text = _read_yaml(self.folder / "config.yaml")
        algo = self.config.get("algo") or {}
        self.aem = {"enabled": bool(algo.get("aem", False)), "min_range": algo.get("aem_min_range"),
                    "lambda": algo.get("aem_lambda"), "level": algo.get("aem_level", "turn"),
                    "advantage": algo.get("advantage")}
        self.sets = self._find_sets()
        for s in self.sets:
            s.index.refresh()

    def _find_sets(self) -> list[EpisodeSet]:
        f, sets = self.folder, []
        if self.kind != "train":
            return [EpisodeSet("all", self.kind, self._file(f / "trajectories.jsonl"))]
        steps = sorted(p for p in (f / "trajectories").glob("step-*.jsonl") if _step_of(p) is not None)
        replay = (self.config.get("run") or {}).get("replay")
        if steps:
            sets += [EpisodeSet(f"s{_step_of(p):06d}", f"step {_step_of(p)}", self._file(p), step=_step_of(p))
                     for p in steps]
        elif replay:  # each step's episodes: the replay file's, of the tasks its credit names
            path = Path(replay) if Path(replay).is_absolute() else (Path.cwd() / replay)
            for step in self.credit_steps():
                tasks = frozenset(str(r["task"]) for r in self.credit(step)[0])
                sets.append(EpisodeSet(f"s{step:06d}", f"step {step} (replay)", self._file(path),
                                       step=step, tasks=tasks))
        for p in sorted((f / "heldout").glob("*/trajectories.jsonl")):
            sets.append(EpisodeSet("h-" + p.parent.name, f"held-out {p.parent.name}", self._file(p)))
        return sets

    def credit_steps(self) -> list[int]:
        return sorted(s for p in (self.folder / CREDIT_DIR).glob("step-*.jsonl")
                      if (s := _step_of(p)) is not None)

    def credit(self, step: int | None) -> tuple[list[dict[str, Any]], list[str]]:
        """Step `step`'s credit rows and the problems of its bad lines ([] without a record)."""
        if step is None:
            return [], []
        path = self.folder / CREDIT_DIR / f"step-{step:06d}.jsonl"
        try:
            st = path.stat()
        except FileNotFoundError:
            return [], []
        stat = (st.st_size, st.st_mtime_ns)
        cached = self._credit.get(step)
        if cached is None or cached[0] != stat:
            rows, bad = _scan_rows(path)
            self._credit[step] = cached = (stat, rows, bad)
        return cached[1], cached[2]

    def set(self, set_id: str) -> EpisodeSet:
        for s in self.sets:
            if s.id == set_id:
                return s
        raise ViewError(f"{self.folder} has no episode set {set_id!r}")

    # ------------------------------------------------------------------ what the page loads
    def run(self) -> dict[str, Any]:
        """The run page: curves, config, held-out rows, skipped steps, dropped episodes, the
        sets of episodes, every bad line met."""
        f = self.folder
        rows, bad = _scan_rows(f / "metrics.jsonl")
        metrics = {}  # a resumed run logs a step twice: its last row counts
        for r in rows:
            if isinstance(r, dict) and r.get("kind", "train") == "train" and "step" in r:
                metrics[int(r["step"])] = r
        other = [r for r in rows if isinstance(r, dict) and r.get("kind", "train") != "train"]
        dropped, bad_d = _scan_rows(f / ("dropped_episodes.jsonl" if self.kind == "train" else "dropped.jsonl"))
        out: dict[str, Any] = {
            "name": f.name, "path": str(f), "kind": self.kind, "config": self.config_text, "aem": self.aem,
            "metrics": [metrics[k] for k in sorted(metrics)], "other_rows": other,
            "skipped": [k for k in sorted(metrics) if metrics[k].get("optimizer_step_skipped") == 1.0],
            "dropped": dropped, "bad_lines": bad + bad_d,
            "sets": [{"id": s.id, "label": s.label, "step": s.step, "episodes": len(s.entries()),
                      "bad": sum("error" in e for e in s.entries()),
                      "credit": bool(self.credit(s.step)[0])} for s in self.sets],
        }
        for name in ("eval.json", "summary.json"):
            p = f / name
            if p.is_file():
                try:
                    out[name.removesuffix(".json")] = json.loads(p.read_text())
                except json.JSONDecodeError as exc:
                    out["bad_lines"].append(f"{name}: not valid JSON: {exc.msg}")
        return out

    def set_rows(self, set_id: str) -> dict[str, Any]:
        """The table of one set: a row per episode (joined with its credit: alpha range,
        masked) and, where the step has a credit record, each task's group statistics."""
        s = self.set(set_id)
        credit, bad = self.credit(s.step)
        per_ep: dict[tuple[str, Any], list[dict[str, Any]]] = {}
        for r in credit:
            per_ep.setdefault((str(r["task"]), r["sample"]), []).append(r)
        rows = []
        for e in s.entries():
            row = dict(e)
            c = per_ep.get((e.get("task"), e.get("sample")))
            if c:
                row.update(masked=any(r["masked"] for r in c), alpha_min=min(r["alpha"] for r in c),
                           alpha_max=max(r["alpha"] for r in c),
                           entropy_mean=sum(r["entropy"] for r in c) / len(c))
            rows.append(row)
        groups = group_stats(credit, min_range=self.aem["min_range"], level=self.aem["level"],
                             aem=self.aem["enabled"]) if credit else {}
        return {"set": set_id, "label": s.label, "step": s.step, "rows": rows, "groups": groups,
                "bad_lines": bad}

    def episode(self, set_id: str, offset: int) -> dict[str, Any]:
        """One episode read from its offset, token ids left out, with its credit rows (turn
        order) and its group's statistics."""
        s = self.set(set_id)
        if not any(e["offset"] == offset for e in s.entries()):
            raise ViewError(f"{s.index.path}: no line starts at byte {offset}")
        row = s.index.read(offset)
        ep = strip_tokens(row)
        credit, _ = self.credit(s.step)
        mine = sorted((r for r in credit if str(r["task"]) == str(row.get("instance_id"))
                       and r["sample"] == row.get("sample_index")), key=lambda r: r["turn"])
        group = [r for r in credit if str(r["task"]) == str(row.get("instance_id"))]
        stats = group_stats(group, min_range=self.aem["min_range"], level=self.aem["level"],
                            aem=self.aem["enabled"]) if group else {}
        return {"set": set_id, "offset": offset, "step": s.step, "episode": ep, "credit": mine,
                "group": stats.get(str(row.get("instance_id")))}

    def group(self, set_id: str, task: str) -> dict[str, Any]:
        """A task's G samples side by side: each one's turns' entropies and alphas (token
        entropies left out: only an episode's page shows them)."""
        s = self.set(set_id)
        credit, _ = self.credit(s.step)
        rows = [{k: v for k, v in r.items() if k != "token_entropy"} for r in credit if str(r["task"]) == task]
        members = [e for e in s.entries() if e.get("task") == task]
        return {"set": set_id, "task": task, "step": s.step, "members": members, "credit": rows,
                "stats": group_stats(rows, min_range=self.aem["min_range"], level=self.aem["level"],
                                     aem=self.aem["enabled"]).get(task)}


def folder_size(path: Path) -> int:
    """Bytes under `path` (what a static copy of the page costs)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


__all__ = ["RunSource", "ViewError", "episode_summary", "folder_size", "group_stats", "strip_tokens"]
