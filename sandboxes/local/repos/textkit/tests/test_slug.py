import pytest

from textkit.slug import slugify, to_ascii


def test_simple_words():
    assert slugify("Hello World") == "hello-world"


def test_accents_are_folded():
    assert to_ascii("Café déjà vu") == "Cafe deja vu"
    assert slugify("Crème Brûlée") == "creme-brulee"


def test_custom_separator():
    assert slugify("a b c", sep="_") == "a_b_c"


def test_bad_separator():
    with pytest.raises(ValueError):
        slugify("x", sep="a")


def test_max_length_cuts_at_word():
    assert slugify("one two three", max_length=9) == "one-two"
