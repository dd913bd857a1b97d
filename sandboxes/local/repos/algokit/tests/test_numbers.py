import pytest

from algokit.numbers import clamp, human_bytes, luhn_valid, ordinal, to_base


@pytest.mark.parametrize("n,text", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"),
                                    (12, "12th"), (13, "13th"), (21, "21st"), (22, "22nd"),
                                    (101, "101st"), (111, "111th"), (0, "0th")])
def test_ordinal(n, text):
    assert ordinal(n) == text


def test_ordinal_negative():
    with pytest.raises(ValueError):
        ordinal(-1)


@pytest.mark.parametrize("size,text", [(0, "0 B"), (512, "512 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
                                       (1048576, "1.0 MiB"), (5 * 1024 ** 4, "5.0 TiB"),
                                       (2048 * 1024 ** 4, "2048.0 TiB")])
def test_human_bytes(size, text):
    assert human_bytes(size) == text


@pytest.mark.parametrize("number,valid", [("4539 1488 0343 6467", True), ("79927398713", True),
                                          ("79927398710", False), ("1", False), ("12a4", False)])
def test_luhn(number, valid):
    assert luhn_valid(number) is valid


@pytest.mark.parametrize("number,base,text", [(0, 2, "0"), (10, 2, "1010"), (255, 16, "ff"),
                                              (35, 36, "z"), (36, 36, "10"), (8, 8, "10")])
def test_to_base(number, base, text):
    assert to_base(number, base) == text


@pytest.mark.parametrize("base", [1, 37])
def test_to_base_range(base):
    with pytest.raises(ValueError):
        to_base(5, base)


def test_clamp():
    assert clamp(5, 0, 10) == 5
    assert clamp(-1, 0, 10) == 0
    assert clamp(11, 0, 10) == 10
    with pytest.raises(ValueError):
        clamp(1, 2, 0)
