from pyledger.money import Money
from pyledger.parser import parse_ledger
from pyledger.report import balances_by_tag, monthly_totals, running_balance

LEDGER = """\
2024-01-03 Shop -12.50 USD #food
2024-01-15 Salary 2000.00 USD #income
2024-02-01 Rent -900.00 USD #home #fixed
2024-02-03 Shop -7.25 USD #food
2024-02-04 Hotel -80.00 EUR #travel
"""


def test_balances_by_tag():
    balances = balances_by_tag(parse_ledger(LEDGER))
    assert balances["food"] == Money.of("-19.75")
    assert balances["home"] == balances["fixed"] == Money.of("-900.00")
    assert "travel" not in balances


def test_monthly_totals_within_one_year():
    totals = monthly_totals(parse_ledger(LEDGER))
    assert list(totals.values()) == [Money.of("1987.50"), Money.of("-907.25")]


def test_running_balance_sorted_and_stable():
    text = "2024-01-02 B 1 USD\n2024-01-01 A 2 USD\n2024-01-02 C 3 USD\n"
    rows = running_balance(parse_ledger(text), opening=Money.of("10"))
    assert [e.payee for e, _ in rows] == ["A", "B", "C"]
    assert [str(b) for _, b in rows] == ["12.00 USD", "13.00 USD", "16.00 USD"]
