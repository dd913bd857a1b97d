"""Parse ledger text. One entry per line:

    DATE  PAYEE  AMOUNT CURRENCY  [#tag ...]

Blank lines and lines starting with ';' are ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation

from pyledger.money import Money

LINE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})\s+"
    r"(?P<payee>.+?)\s+"
    r"(?P<amount>[-+]?\d+(?:\.\d+)?)\s+"
    r"(?P<currency>[A-Za-z]{3})"
    r"(?P<tags>(?:\s+#[\w-]+)*)\s*$"
)


class ParseError(ValueError):
    """A ledger line that cannot be read; says which line and why."""

    def __init__(self, lineno: int, line: str, reason: str):
        super().__init__(f"line {lineno}: {reason}: {line!r}")
        self.lineno = lineno
        self.line = line
        self.reason = reason


@dataclass(frozen=True)
class Entry:
    date: date
    payee: str
    amount: Money
    tags: tuple[str, ...] = ()


def parse_amount(text: str) -> Decimal:
    """The decimal value of an amount as written in a ledger."""
    try:
        return Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"not an amount: {text!r}") from exc


def parse_line(line: str, lineno: int = 1) -> Entry | None:
    """One entry, or None for blank and comment lines."""
    stripped = line.strip()
    if not stripped or stripped.startswith(";"):
        return None
    match = LINE.match(stripped)
    if not match:
        raise ParseError(lineno, line, "expected DATE PAYEE AMOUNT CURRENCY [#tags]")
    try:
        when = date.fromisoformat(match["date"])
    except ValueError as exc:
        raise ParseError(lineno, line, f"bad date ({exc})") from exc
    try:
        amount = Money.of(parse_amount(match["amount"]), match["currency"])
    except ValueError as exc:
        raise ParseError(lineno, line, str(exc)) from exc
    tags = tuple(tag.lstrip("#").lower() for tag in match["tags"].split())
    return Entry(when, match["payee"].strip(), amount, tags)


def parse_ledger(text: str) -> list[Entry]:
    """All entries of a ledger, in file order."""
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        entry = parse_line(line, lineno)
        if entry is not None:
            entries.append(entry)
    return entries
