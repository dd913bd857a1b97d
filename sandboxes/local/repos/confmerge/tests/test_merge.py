from confmerge.merge import deep_merge, set_path


def test_nested_merge():
    base = {"db": {"host": "localhost", "port": 5432}, "debug": False}
    merged = deep_merge(base, {"db": {"port": 6543}})
    assert merged == {"db": {"host": "localhost", "port": 6543}, "debug": False}


def test_scalar_replaces_section():
    assert deep_merge({"a": {"b": 1}}, {"a": 3}) == {"a": 3}


def test_override_not_modified():
    override = {"db": {"port": 1}}
    deep_merge({"db": {"port": 0, "host": "h"}}, override)
    assert override == {"db": {"port": 1}}


def test_set_path_creates_sections():
    config = {}
    set_path(config, ["a", "b", "c"], 1)
    assert config == {"a": {"b": {"c": 1}}}
