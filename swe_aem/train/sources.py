"""The one place a live run's rollout source is chosen (the trainer's, and the tests'):
rank 0's server or a Ray fleet (swe_aem.train.rollouts), behind the asynchronous look-ahead
(swe_aem.train.stream) when rollout.max_staleness > 0. A replay is opened by the trainer
from its file (`ReplayRollouts`): it has no server to choose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from swe_aem.config import Config
from swe_aem.policy.models import ModelPreset
from swe_aem.train.rollouts import (
    FleetRollouts,
    HeldoutReport,
    LiveRollouts,
    ServedPolicy,
    uses_fleet,
)
from swe_aem.train.stream import RolloutStream


def open_rollouts(cfg: Config, preset: ModelPreset, model_path: Path, tokenizer: Any, run_dir: Path,
                  run_id: str, report: HeldoutReport | None = None, *, start: int = 0,
                  batch_of: Callable[[int], list] | None = None, **fleet_kw: Any) -> ServedPolicy:
    """A live run's rollout source: rank 0's server (LiveRollouts) or a fleet (FleetRollouts),
    behind the asynchronous look-ahead when rollout.max_staleness > 0 (`batch_of(t)`: step
    t's round-0 instances). `start`: the first step this process trains (a resume's)."""
    kind = FleetRollouts if uses_fleet(cfg) else LiveRollouts
    live = kind(cfg, preset, model_path, tokenizer, run_dir, run_id, report, start=start, **fleet_kw)
    if not cfg.rollout.max_staleness:
        return live
    if batch_of is None:
        live.close()
        raise TypeError("asynchronous rollouts need batch_of (step -> its round-0 instances)")
    return RolloutStream(live, batch_of, steps=cfg.run.steps, max_staleness=cfg.rollout.max_staleness,
                         start=start)
