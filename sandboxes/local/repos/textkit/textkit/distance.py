"""Edit distances between strings."""

from __future__ import annotations


def levenshtein(a: str, b: str, transpositions: bool = False) -> int:
    """Minimum number of single-character edits turning `a` into `b`.

    Edits are insertions, deletions and substitutions; with `transpositions=True`
    swapping two adjacent characters also counts as one edit (optimal string
    alignment distance).
    """
    rows = len(a) + 1
    cols = len(b) + 1
    dist = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        dist[i][0] = i
    for j in range(cols):
        dist[0][j] = j
    for i in range(1, rows):
        for j in range(1, cols):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            dist[i][j] = min(
                dist[i - 1][j] + 1,
                dist[i][j - 1] + 1,
                dist[i - 1][j - 1] + cost,
            )
            if transpositions and i > 1 and j > 1 and a[i - 1] == b[j - 1] and a[i - 2] == b[j - 2]:
                dist[i][j] = min(dist[i][j], dist[i - 2][j - 2] + cost)
    return dist[-1][-1]


def similarity(a: str, b: str, transpositions: bool = False) -> float:
    """1.0 for equal strings down to 0.0 for completely different ones."""
    return 1.0 - levenshtein(a, b, transpositions) / max(len(a), len(b))
