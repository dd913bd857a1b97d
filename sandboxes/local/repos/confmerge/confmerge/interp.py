"""`${section.key}` references inside string values."""

from __future__ import annotations

import re
from typing import Any

REF = re.compile(r"\$\{([A-Za-z0-9_.]+)\}")


class InterpolationError(KeyError):
    """A reference names a missing key, or references form a cycle."""

    def __str__(self) -> str:
        return str(self.args[0])


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise InterpolationError(f"reference ${{{dotted}}} names no key")
        node = node[key]
    return node


def interpolate(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` with every `${a.b}` in a string replaced by that key's value.

    A value that is exactly one reference keeps the referenced type ("${db.port}" -> 5432).
    References may point at values that contain references themselves.
    """

    def resolve(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if not isinstance(value, str):
            return value
        whole = REF.fullmatch(value)
        if whole:
            return _get(config, whole.group(1))
        return REF.sub(lambda m: str(_get(config, m.group(1))), value)

    return resolve(config)
