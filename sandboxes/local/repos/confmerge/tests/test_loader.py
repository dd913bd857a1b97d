from confmerge.loader import load

DEFAULTS = {"app": {"name": "demo", "debug": False}, "db": {"host": "localhost", "port": 5432}}


def test_layers_in_order():
    config = load(DEFAULTS, {"db": {"port": 1}}, {"db": {"port": 2}}, environ={})
    assert config["db"] == {"host": "localhost", "port": 2}


def test_environment_wins():
    config = load(DEFAULTS, {"db": {"port": 1}}, environ={"APP_DB__PORT": "3"})
    assert config["db"]["port"] == 3


def test_references_resolved_after_merge():
    config = load({"db": {"host": "h"}, "url": "pg://${db.host}"}, {"db": {"host": "prod"}}, environ={})
    assert config["url"] == "pg://prod"
