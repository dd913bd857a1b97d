import pytest

from algokit.codec import from_roman, rle_decode, rle_encode, to_roman


@pytest.mark.parametrize("text,code", [("aaabcc", "3a1b2c"), ("", ""), ("x", "1x"),
                                       ("aaaaaaaaaaaab", "12a1b")])
def test_rle_roundtrip(text, code):
    assert rle_encode(text) == code
    assert rle_decode(code) == text


@pytest.mark.parametrize("bad", ["a", "3a2", "2ab"])
def test_rle_decode_rejects(bad):
    with pytest.raises(ValueError):
        rle_decode(bad)


@pytest.mark.parametrize("number,numeral", [(1, "I"), (4, "IV"), (9, "IX"), (14, "XIV"), (40, "XL"),
                                            (1994, "MCMXCIV"), (3999, "MMMCMXCIX")])
def test_roman(number, numeral):
    assert to_roman(number) == numeral
    assert from_roman(numeral) == number


@pytest.mark.parametrize("number", [0, 4000, -1])
def test_to_roman_range(number):
    with pytest.raises(ValueError):
        to_roman(number)


def test_from_roman_rejects():
    with pytest.raises(ValueError):
        from_roman("XIZ")
