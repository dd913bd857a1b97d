"""Closed integer intervals given as (start, end) pairs."""

from __future__ import annotations

Interval = tuple[int, int]


def merge(intervals: list[Interval]) -> list[Interval]:
    """Union of overlapping or touching intervals, sorted."""
    out: list[Interval] = []
    for start, end in sorted(intervals):
        if start > end:
            raise ValueError(f"bad interval ({start}, {end})")
        if out and start <= out[-1][1] + 1:
            last_start, last_end = out[-1]
            out[-1] = (last_start, max(last_end, end))
        else:
            out.append((start, end))
    return out


def total_length(intervals: list[Interval]) -> int:
    """Number of integers covered by the union."""
    total = 0
    for start, end in merge(intervals):
        total += end - start + 1
    return total


def intersect(a: Interval, b: Interval) -> Interval | None:
    """The common part of two intervals, or None."""
    start = max(a[0], b[0])
    end = min(a[1], b[1])
    if start > end:
        return None
    return (start, end)


def gaps(intervals: list[Interval], low: int, high: int) -> list[Interval]:
    """Parts of [low, high] not covered by any interval."""
    out: list[Interval] = []
    cursor = low
    for start, end in merge(intervals):
        if end < low or start > high:
            continue
        if start > cursor:
            out.append((cursor, start - 1))
        cursor = max(cursor, end + 1)
    if cursor <= high:
        out.append((cursor, high))
    return out
