"""Environment overrides: APP_DB__PORT=5433 sets config["db"]["port"] = 5433."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confmerge.merge import set_path


def coerce(raw: str, like: Any) -> Any:
    """Convert the string `raw` to the type of the value it replaces (`like`)."""
    if like is None or isinstance(like, str):
        return raw
    if isinstance(like, bool):
        return bool(raw)
    if isinstance(like, int):
        return int(raw)
    if isinstance(like, float):
        return float(raw)
    if isinstance(like, list):
        return [item.strip() for item in raw.split(",") if item.strip()]
    raise TypeError(f"cannot override a {type(like).__name__} from the environment")


def _lookup(config: dict[str, Any], path: list[str]) -> Any:
    node: Any = config
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def apply_env(config: dict[str, Any], environ: Mapping[str, str], prefix: str = "APP_") -> dict[str, Any]:
    """Apply every PREFIX-variable to `config` in place; `__` separates nesting levels."""
    for name, raw in sorted(environ.items()):
        if not name.startswith(prefix):
            continue
        path = [part.lower() for part in name[len(prefix):].split("__") if part]
        if not path:
            continue
        try:
            value = coerce(raw, _lookup(config, path))
        except ValueError as exc:
            raise ValueError(f"{name}={raw!r}: {exc}") from exc
        set_path(config, path, value)
    return config
