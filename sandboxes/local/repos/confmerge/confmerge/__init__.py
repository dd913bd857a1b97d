"""confmerge: layered configuration (defaults < overrides < environment) with references."""

from confmerge.env import apply_env, coerce
from confmerge.interp import InterpolationError, interpolate
from confmerge.loader import load
from confmerge.merge import deep_merge

__all__ = ["InterpolationError", "apply_env", "coerce", "deep_merge", "interpolate", "load"]
