"""Reports over parsed entries: balances per tag, totals per month, running balance."""

from __future__ import annotations

from collections.abc import Iterable

from pyledger.money import Money
from pyledger.parser import Entry


def balances_by_tag(entries: Iterable[Entry], currency: str = "USD") -> dict[str, Money]:
    """Sum of amounts per tag; an entry with several tags counts towards each."""
    totals: dict[str, Money] = {}
    for entry in entries:
        if entry.amount.currency != currency:
            continue
        for tag in entry.tags:
            totals[tag] = totals.get(tag, Money.zero(currency)) + entry.amount
    return dict(sorted(totals.items()))


def monthly_totals(entries: Iterable[Entry], currency: str = "USD") -> dict[str, Money]:
    """Net amount per calendar month, keyed "YYYY-MM", in chronological order."""
    totals: dict[str, Money] = {}
    for entry in entries:
        if entry.amount.currency != currency:
            continue
        key = f"{entry.date.month:02d}"
        totals[key] = totals.get(key, Money.zero(currency)) + entry.amount
    return dict(sorted(totals.items()))


def running_balance(entries: Iterable[Entry], opening: Money | None = None) -> list[tuple[Entry, Money]]:
    """Each entry with the balance after it, entries sorted by date (stable for equal dates)."""
    ordered = sorted(entries, key=lambda e: e.date)
    balance = opening
    rows = []
    for entry in ordered:
        balance = entry.amount if balance is None else balance + entry.amount
        rows.append((entry, balance))
    return rows
