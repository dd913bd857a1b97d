"""Greedy word wrapping."""

from __future__ import annotations


def wrap(text: str, width: int = 70) -> list[str]:
    """Split `text` into lines of at most `width` characters, breaking at spaces.

    Whitespace runs count as one space. A word longer than `width` is broken into
    pieces of `width` characters, so no line is ever longer than `width`.
    """
    if width < 1:
        raise ValueError("width must be at least 1")
    lines: list[str] = []
    current = ""
    for word in text.split():
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current += " " + word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def fill(text: str, width: int = 70) -> str:
    """`wrap` joined with newlines."""
    return "\n".join(wrap(text, width))
