import pytest

from textkit.wrap import fill, wrap


def test_wraps_at_spaces():
    assert wrap("the quick brown fox jumps", 10) == ["the quick", "brown fox", "jumps"]


def test_whitespace_runs_collapse():
    assert wrap("a   b\n\tc", 80) == ["a b c"]


def test_empty_text():
    assert wrap("", 10) == []


def test_exact_fit():
    assert wrap("abcd efgh", 9) == ["abcd efgh"]


def test_bad_width():
    with pytest.raises(ValueError):
        wrap("x", 0)


def test_fill_joins_lines():
    assert fill("aa bb cc", 5) == "aa bb\ncc"
