"""Run-length coding and roman numerals."""

from __future__ import annotations

_ROMAN = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
          (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]


def rle_encode(text: str) -> str:
    """'aaabcc' -> '3a1b2c'."""
    if not text:
        return ""
    out = []
    count = 1
    for prev, char in zip(text, text[1:]):
        if char == prev:
            count += 1
        else:
            out.append(f"{count}{prev}")
            count = 1
    out.append(f"{count}{text[-1]}")
    return "".join(out)


def rle_decode(code: str) -> str:
    """'3a1b2c' -> 'aaabcc'; a letter without a count is an error."""
    out = []
    digits = ""
    for char in code:
        if char.isdigit():
            digits += char
        else:
            if not digits:
                raise ValueError(f"missing count before {char!r}")
            out.append(char * int(digits))
            digits = ""
    if digits:
        raise ValueError("trailing count without a character")
    return "".join(out)


def to_roman(number: int) -> str:
    """1..3999 -> roman numeral."""
    if number < 1 or number > 3999:
        raise ValueError(f"{number} is out of range 1..3999")
    out = []
    for value, symbol in _ROMAN:
        while number >= value:
            out.append(symbol)
            number -= value
    return "".join(out)


def from_roman(text: str) -> int:
    """Roman numeral -> int (subtractive pairs allowed)."""
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    total = 0
    for i, char in enumerate(text):
        if char not in values:
            raise ValueError(f"not a roman digit: {char!r}")
        value = values[char]
        if i + 1 < len(text) and values.get(text[i + 1], 0) > value:
            total -= value
        else:
            total += value
    return total
