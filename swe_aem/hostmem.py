"""Host (CPU) memory of this process and this node: read, bounded, given back, measured by phase.

Stdlib only (rank 0 of the layering): the trainer, the rollout fleet, the CPU plan and the
memory bench all read the same numbers.

- `rss_bytes()` / `peak_rss_bytes()`: this process's resident set now / its high-water mark
  (/proc/self/status VmRSS / VmHWM); `node_memory()`: the node's total and available bytes
  (/proc/meminfo), what Ray's memory monitor compares with its threshold.
- `limit_malloc_arenas()`: glibc makes up to 8 x cores malloc arenas, one per thread that
  allocates (DeepSpeed's, the tokenizer's, Ray's, the rollout stream's); each keeps what its
  thread freed. Capped at 2 before those threads start, freed memory is found again.
- `trim()`: malloc_trim(0), the freed heap pages given back to the kernel (a step's batch and
  activations stay resident otherwise until the next step reuses them).
- `PhaseMeter`: a sampling thread that keeps the peak RSS of each named phase (`with
  meter.phase("update"):`), for the memory bench and the trainer's per-step metrics.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GIB = 1024**3
_M_ARENA_MAX = -8  # glibc mallopt parameter
_libc: ctypes.CDLL | None = None
_libc_missing = False


def _status_kib(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process (this one by default), in bytes; 0 if it is gone."""
    try:
        return _status_kib("VmRSS", pid) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0


def peak_rss_bytes(pid: int | str = "self") -> int:
    """The process's resident high-water mark (VmHWM), in bytes."""
    try:
        return _status_kib("VmHWM", pid) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0


def tree_rss_bytes(pid: int) -> int:
    """RSS of a process and all its descendants (a vLLM server and its engine core), bytes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss_bytes(p)
        todo.extend(children.get(p, []))
    return total


def node_memory() -> tuple[int, int]:
    """(total, available) bytes of this node's memory (/proc/meminfo MemTotal, MemAvailable)."""
    fields: dict[str, int] = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        fields[name] = int(rest.split()[0]) * 1024
    return fields["MemTotal"], fields.get("MemAvailable", fields.get("MemFree", 0))


def _glibc() -> ctypes.CDLL | None:
    global _libc, _libc_missing
    if _libc is None and not _libc_missing:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim  # noqa: B018 (musl has none)
        except (OSError, AttributeError):
            _libc, _libc_missing = None, True
    return _libc


def limit_malloc_arenas(arenas: int | None = None) -> bool:
    """Cap glibc's malloc arenas (MALLOC_ARENA_MAX when set, else 2); True if it took. Call it
    before the threads that allocate start: arenas made already stay."""
    libc = _glibc()
    if libc is None:
        return False
    n = arenas if arenas is not None else int(os.environ.get("MALLOC_ARENA_MAX", "2"))
    return bool(libc.mallopt(_M_ARENA_MAX, n))


def trim() -> None:
    """Give the heap's free pages back to the kernel (glibc malloc_trim(0); nothing elsewhere)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class PhaseMeter:
    """Peak RSS of this process per phase, sampled every `interval_s` by a thread of its own.

    `with meter.phase(name):` names what runs; `peaks` maps each name to the highest RSS
    seen while it ran (bytes; a phase entered twice keeps its highest). Sampling misses a
    spike shorter than the interval: VmHWM (`peak_rss_bytes`) bounds the whole run.
    """

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self.peaks: dict[str, int] = {}
        self._current: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="phase-meter", daemon=True)
        self._thread.start()

    def _note(self) -> None:
        rss = rss_bytes()
        with self._lock:
            if self._current is not None:
                self.peaks[self._current] = max(self.peaks.get(self._current, 0), rss)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._note()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self._lock:
            outer, self._current = self._current, name
        self._note()
        try:
            yield
        finally:
            self._note()
            with self._lock:
                self._current = outer

    def close(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return dict(self.peaks)

