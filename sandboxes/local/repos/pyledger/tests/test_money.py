from decimal import Decimal

import pytest

from pyledger.money import CurrencyMismatch, Money


def test_of_rounds_half_even():
    assert Money.of("2.675").amount == Decimal("2.68")
    assert Money.of("2.665").amount == Decimal("2.66")


def test_of_rejects_float():
    with pytest.raises(TypeError):
        Money.of(1.5)


def test_add_and_subtract():
    assert Money.of("1.10") + Money.of("2.20") == Money.of("3.30")
    assert Money.of("5") - Money.of("0.01") == Money.of("4.99")


def test_currency_mismatch():
    with pytest.raises(CurrencyMismatch):
        Money.of("1", "USD") + Money.of("1", "EUR")


def test_multiply_rounds():
    assert Money.of("0.10") * 3 == Money.of("0.30")
    assert Money.of("1.00") * Decimal("0.333") == Money.of("0.33")


def test_allocate_even_split():
    assert Money.of("9.00").allocate(3) == [Money.of("3.00")] * 3


def test_allocate_rejects_zero_parts():
    with pytest.raises(ValueError):
        Money.of("1").allocate(0)


def test_str():
    assert str(Money.of("-3.5", "eur")) == "-3.50 EUR"
