"""Money: an exact decimal amount in one currency, always rounded to cents."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal

CENT = Decimal("0.01")


class CurrencyMismatch(ValueError):
    """Two amounts in different currencies were combined."""


@dataclass(frozen=True)
class Money:
    amount: Decimal
    currency: str = "USD"

    @classmethod
    def of(cls, amount: object, currency: str = "USD") -> "Money":
        """Build from an int, str or Decimal (never a float), rounded half-even to cents."""
        if isinstance(amount, float):
            raise TypeError("use a string or Decimal for money, not a float")
        value = Decimal(str(amount)).quantize(CENT, rounding=ROUND_HALF_EVEN)
        return cls(value, currency.upper())

    @classmethod
    def zero(cls, currency: str = "USD") -> "Money":
        return cls(Decimal("0.00"), currency.upper())

    def _same_currency(self, other: "Money") -> None:
        if not isinstance(other, Money):
            raise TypeError(f"cannot combine Money with {type(other).__name__}")
        if other.currency != self.currency:
            raise CurrencyMismatch(f"cannot combine {self.currency} and {other.currency}")

    def __add__(self, other: "Money") -> "Money":
        self._same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: "Money") -> "Money":
        self._same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def __neg__(self) -> "Money":
        return Money(-self.amount, self.currency)

    def __mul__(self, factor: int | Decimal) -> "Money":
        return Money.of(self.amount * Decimal(str(factor)), self.currency)

    def is_negative(self) -> bool:
        return self.amount < 0

    def allocate(self, parts: int) -> list["Money"]:
        """Split into `parts` amounts that add up exactly to this one."""
        if parts <= 0:
            raise ValueError("parts must be a positive integer")
        share = (self.amount / parts).quantize(CENT, rounding=ROUND_DOWN)
        return [Money(share, self.currency) for _ in range(parts)]

    def __str__(self) -> str:
        return f"{self.amount:.2f} {self.currency}"
