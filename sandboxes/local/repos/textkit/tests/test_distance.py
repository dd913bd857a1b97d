import pytest

from textkit.distance import levenshtein, similarity


@pytest.mark.parametrize(
    "a,b,d",
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("flaw", "lawn", 2), ("same", "same", 0)],
)
def test_levenshtein(a, b, d):
    assert levenshtein(a, b) == d
    assert levenshtein(b, a) == d


def test_transposition_off_by_default():
    assert levenshtein("ab", "ba") == 2


def test_similarity_range():
    assert similarity("abc", "abc") == 1.0
    assert similarity("abc", "xyz") == 0.0
    assert similarity("abcd", "abce") == 0.75
