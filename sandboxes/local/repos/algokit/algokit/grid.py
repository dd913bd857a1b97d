"""Grids as lists of strings: '#' is a wall, '.' is open."""

from __future__ import annotations

from collections import deque

Cell = tuple[int, int]


def neighbours(grid: list[str], cell: Cell) -> list[Cell]:
    """Open cells up, down, left and right of `cell`."""
    row, col = cell
    out = []
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        r, c = row + dr, col + dc
        if 0 <= r < len(grid) and 0 <= c < len(grid[r]) and grid[r][c] != "#":
            out.append((r, c))
    return out


def shortest_path(grid: list[str], start: Cell, goal: Cell) -> int:
    """Steps of the shortest open path from start to goal, or -1."""
    if grid[start[0]][start[1]] == "#" or grid[goal[0]][goal[1]] == "#":
        return -1
    seen = {start}
    queue = deque([(start, 0)])
    while queue:
        cell, dist = queue.popleft()
        if cell == goal:
            return dist
        for nxt in neighbours(grid, cell):
            if nxt not in seen:
                seen.add(nxt)
                queue.append((nxt, dist + 1))
    return -1


def count_regions(grid: list[str]) -> int:
    """Number of connected open regions."""
    seen: set[Cell] = set()
    regions = 0
    for r, line in enumerate(grid):
        for c, char in enumerate(line):
            if char == "#" or (r, c) in seen:
                continue
            regions += 1
            stack = [(r, c)]
            seen.add((r, c))
            while stack:
                for nxt in neighbours(grid, stack.pop()):
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append(nxt)
    return regions


def spiral(matrix: list[list[int]]) -> list[int]:
    """Elements in clockwise spiral order from the top-left corner."""
    out: list[int] = []
    if not matrix:
        return out
    top, bottom, left, right = 0, len(matrix) - 1, 0, len(matrix[0]) - 1
    while top <= bottom and left <= right:
        for c in range(left, right + 1):
            out.append(matrix[top][c])
        for r in range(top + 1, bottom + 1):
            out.append(matrix[r][right])
        if top < bottom:
            for c in range(right - 1, left - 1, -1):
                out.append(matrix[bottom][c])
        if left < right:
            for r in range(bottom - 1, top, -1):
                out.append(matrix[r][left])
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return out
