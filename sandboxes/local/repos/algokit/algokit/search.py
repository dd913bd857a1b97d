"""Searching sorted sequences."""

from __future__ import annotations

from collections.abc import Sequence


def binary_search(items: Sequence[int], target: int) -> int:
    """Index of `target` in sorted `items`, or -1."""
    lo, hi = 0, len(items) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1


def lower_bound(items: Sequence[int], target: int) -> int:
    """First index whose item is >= target (len(items) if none)."""
    lo, hi = 0, len(items)
    while lo < hi:
        mid = (lo + hi) // 2
        if items[mid] < target:
            lo = mid + 1
        else:
            hi = mid
    return lo


def count_in_range(items: Sequence[int], low: int, high: int) -> int:
    """How many items of sorted `items` lie in [low, high]."""
    if low > high:
        return 0
    start = lower_bound(items, low)
    end = lower_bound(items, high + 1)
    return end - start


def max_subarray(items: Sequence[int]) -> int:
    """Largest sum of a non-empty contiguous run (Kadane)."""
    if not items:
        raise ValueError("max_subarray of an empty sequence")
    best = current = items[0]
    for value in items[1:]:
        if current < 0:
            current = value
        else:
            current = current + value
        if current > best:
            best = current
    return best
