from datetime import date

import pytest

from pyledger.money import Money
from pyledger.parser import ParseError, parse_ledger, parse_line


def test_parse_simple_line():
    entry = parse_line("2024-01-03  Corner shop  -12.50 USD  #food #Weekly")
    assert entry.date == date(2024, 1, 3)
    assert entry.payee == "Corner shop"
    assert entry.amount == Money.of("-12.50", "USD")
    assert entry.tags == ("food", "weekly")


def test_blank_and_comment_lines():
    assert parse_line("") is None
    assert parse_line("   ; a comment") is None


def test_bad_line_names_line_number():
    with pytest.raises(ParseError) as info:
        parse_ledger("2024-01-01 Rent -900.00 USD\nnonsense here\n")
    assert info.value.lineno == 2


def test_bad_date():
    with pytest.raises(ParseError, match="bad date"):
        parse_line("2024-02-30 Rent -900.00 USD")


def test_parse_ledger_keeps_order():
    text = "2024-02-01 B 1 USD\n; skip\n2024-01-01 A 2 USD\n"
    assert [e.payee for e in parse_ledger(text)] == ["B", "A"]
