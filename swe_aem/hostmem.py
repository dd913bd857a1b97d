"""Host (CPU) memory of this process and this node: read, bounded, given back, measured by phase.

Stdlib only (rank 0 of the layering): the trainer, the rollout fleet, the CPU plan and the
memory bench all read the same numbers.

- `rss_bytes()` / `peak_rss_bytes()`: this process's resident set now / its high-water mark
  (/proc/self/status VmRSS / VmHWM); `node_memory()`: the node's total and available bytes
  (/proc/meminfo), what Ray's memory monitor compares with its threshold.
- `limit_malloc_arenas()`: glibc makes up to 8 x cores malloc arenas, one per thread that
  allocates (DeepSpeed's, the tokenizer's, Ray's, the rollout stream's); each keeps what its
  thread freed. Capped at 2 before those threads start, freed memory is found again.
- `map_large_allocations()`: glibc serves a block of at least M_MMAP_THRESHOLD by its own
  mmap, unmapped when freed; below it, from the heap, which keeps what is freed. The
  threshold starts at 128 KiB and rises to the largest block freed so far (up to 32 MiB), so
  after a few steps the trainer's activations (1-20 MiB each for the tiny model) all come
  from the heap and its fragments stay resident: one forward + backward of a 3,120-token
  sample peaked at 3.22 GiB so, 2.21 GiB with the threshold fixed at 4 MiB; two replayed
  trainer steps 5.15 -> 3.49 GiB at 1.12x the wall time (each such block's pages are faulted
  in afresh; docs/measurements/bench_train_memory_mmap.json).
- `trim()`: malloc_trim(0), the freed heap pages given back to the kernel (a step's batch and
  activations stay resident otherwise until the next step reuses them).
- `PhaseMeter`: the exact peak RSS of each named phase (`with meter.phase("update"):`), from
  the kernel's high-water mark reset at each phase's start; for the memory bench and the
  trainer's per-phase metrics.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

GIB = 1024**3
_M_ARENA_MAX = -8  # glibc mallopt parameters
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
"""Blocks from this size up get their own mapping (map_large_allocations' default)."""
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
    """The process's resident high-water mark (VmHWM), in bytes; for this process, the
    highest since it started even where a PhaseMeter reset the kernel's mark."""
    try:
        hwm = _status_kib("VmHWM", pid) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return max(hwm, _run_peak) if pid == "self" else hwm


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


def map_large_allocations(threshold: int | None = None) -> bool:
    """Fix glibc's mmap threshold (`threshold`, else MMAP_THRESHOLD), so that freed large
    blocks go back to the kernel at once; True if it took. Left alone where the user set
    MALLOC_MMAP_THRESHOLD_ (glibc read it at start)."""
    libc = _glibc()
    if libc is None or (threshold is None and "MALLOC_MMAP_THRESHOLD_" in os.environ):
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD if threshold is None else threshold))


def trim() -> None:
    """Give the heap's free pages back to the kernel (glibc malloc_trim(0); nothing elsewhere)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


class PhaseMeter:
    """Peak RSS of this process per named phase, read from the kernel's high-water mark.

    `with meter.phase(name):` resets VmHWM at the phase's start (Linux: "5" written to
    /proc/self/clear_refs) and reads it at its end, so `peaks[name]` is the exact highest
    resident set while it ran, whatever thread allocated (a phase entered twice keeps its
    highest; an outer phase includes its inner ones, across meters: the open phases of every
    meter share one stack, as they share the kernel's one mark). The run's own high-water
    mark survives the resets in `peak_rss_bytes()`. Where the mark cannot be reset (no such
    file, no permission), `peaks` stays empty and nothing else changes.
    """

    def __init__(self) -> None:
        self.peaks: dict[str, int] = {}
        self.last: dict[str, int] = {}  # each phase's peak the last time it ran

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        _fold(_status_kib("VmHWM") * 1024)  # the mark since the last reset: the open phases'
        if not _reset_hwm():
            yield
            return
        _OPEN.append(0)
        try:
            yield
        finally:
            mine = max(_OPEN.pop(), _status_kib("VmHWM") * 1024)
            _fold(mine)
            self.peaks[name] = max(self.peaks.get(name, 0), mine)
            self.last[name] = mine

    def close(self) -> dict[str, int]:
        return dict(self.peaks)


_run_peak = 0  # this process's highest VmHWM before a PhaseMeter reset it
_OPEN: list[int] = []  # the running peak of every open phase (of any meter), innermost last


def _fold(peak: int) -> None:
    """A peak seen now counts for every open phase and for the run."""
    global _run_peak
    _OPEN[:] = [max(p, peak) for p in _OPEN]
    _run_peak = max(_run_peak, peak)


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
