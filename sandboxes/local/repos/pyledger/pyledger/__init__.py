"""pyledger: plain-text ledger parsing and reporting with exact decimal money."""

from pyledger.money import CurrencyMismatch, Money
from pyledger.parser import Entry, ParseError, parse_ledger, parse_line
from pyledger.report import balances_by_tag, monthly_totals, running_balance

__all__ = [
    "CurrencyMismatch",
    "Entry",
    "Money",
    "ParseError",
    "balances_by_tag",
    "monthly_totals",
    "parse_ledger",
    "parse_line",
    "running_balance",
]
