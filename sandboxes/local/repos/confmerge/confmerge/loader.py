"""Putting the layers together."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from confmerge.env import apply_env
from confmerge.interp import interpolate
from confmerge.merge import deep_merge


def load(defaults: dict[str, Any], *overrides: dict[str, Any],
         environ: Mapping[str, str] | None = None, prefix: str = "APP_") -> dict[str, Any]:
    """defaults < each override in order < environment variables, then references resolved."""
    config = defaults
    for layer in overrides:
        config = deep_merge(config, layer)
    config = apply_env(config, os.environ if environ is None else environ, prefix)
    return interpolate(config)
