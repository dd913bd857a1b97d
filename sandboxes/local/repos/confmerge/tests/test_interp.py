import pytest

from confmerge.interp import InterpolationError, interpolate


def test_reference_in_string():
    config = {"db": {"host": "h", "port": 5432}, "url": "pg://${db.host}:${db.port}/x"}
    assert interpolate(config)["url"] == "pg://h:5432/x"


def test_whole_reference_keeps_type():
    assert interpolate({"a": 3, "b": "${a}"})["b"] == 3


def test_missing_reference():
    with pytest.raises(InterpolationError, match="nope"):
        interpolate({"a": "${nope}"})


def test_lists_and_other_values():
    config = {"n": 1, "xs": ["${n}", "v${n}", 2.5, None]}
    assert interpolate(config)["xs"] == [1, "v1", 2.5, None]
