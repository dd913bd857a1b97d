"""Formatting and checking numbers."""

from __future__ import annotations


def ordinal(n: int) -> str:
    """1 -> '1st', 12 -> '12th', 23 -> '23rd'."""
    if n < 0:
        raise ValueError("ordinal of a negative number")
    if 10 <= n % 100 <= 20:
        suffix = "th"
    elif n % 10 == 1:
        suffix = "st"
    elif n % 10 == 2:
        suffix = "nd"
    elif n % 10 == 3:
        suffix = "rd"
    else:
        suffix = "th"
    return f"{n}{suffix}"


def human_bytes(size: int) -> str:
    """1536 -> '1.5 KiB'; below 1024 bytes: '512 B'."""
    if size < 0:
        raise ValueError("negative size")
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    value = float(size)
    index = 0
    while value >= 1024 and index < len(units) - 1:
        value /= 1024
        index += 1
    if index == 0:
        return f"{size} B"
    return f"{value:.1f} {units[index]}"


def luhn_valid(digits: str) -> bool:
    """Luhn checksum of a card-like number (spaces allowed)."""
    digits = digits.replace(" ", "")
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char)
        if i % 2 == 1:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def to_base(number: int, base: int) -> str:
    """Non-negative `number` in `base` (2..36), digits 0-9 then a-z."""
    if base < 2 or base > 36:
        raise ValueError(f"base {base} is out of range 2..36")
    if number < 0:
        raise ValueError("negative number")
    if number == 0:
        return "0"
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    while number > 0:
        number, rest = divmod(number, base)
        out.append(alphabet[rest])
    return "".join(reversed(out))


def clamp(value: float, low: float, high: float) -> float:
    """`value` limited to [low, high]."""
    if low > high:
        raise ValueError("low > high")
    if value < low:
        return low
    if value > high:
        return high
    return value
