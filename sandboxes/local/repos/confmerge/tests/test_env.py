import pytest

from confmerge.env import apply_env, coerce


def test_int_and_float():
    assert coerce("5433", 5432) == 5433
    assert coerce("0.5", 1.0) == 0.5


def test_list_from_commas():
    assert coerce("a, b,,c", []) == ["a", "b", "c"]


def test_nested_override():
    config = {"db": {"port": 5432, "host": "localhost"}}
    apply_env(config, {"APP_DB__PORT": "6000", "OTHER": "x"})
    assert config == {"db": {"port": 6000, "host": "localhost"}}


def test_new_key_stays_string():
    config = {}
    apply_env(config, {"APP_NAME": "demo"})
    assert config == {"name": "demo"}


def test_bad_int_names_variable():
    with pytest.raises(ValueError, match="APP_WORKERS"):
        apply_env({"workers": 4}, {"APP_WORKERS": "many"})
