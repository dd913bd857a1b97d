"""Deep merging of nested dicts."""

from __future__ import annotations

from typing import Any


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A new dict: `override` laid over `base`, nested dicts merged key by key.

    Neither argument is modified. A non-dict value in `override` replaces whatever
    `base` had under that key.
    """
    result = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = value
    return result


def set_path(config: dict[str, Any], path: list[str], value: Any) -> None:
    """Set config[path[0]][path[1]]... = value in place, creating dicts on the way."""
    node = config
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise KeyError(f"{'.'.join(path)}: {key!r} is not a section")
    node[path[-1]] = value
