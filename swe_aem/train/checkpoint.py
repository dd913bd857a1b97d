"""Atomic checkpoints: DeepSpeed state + trainer state + RNG, resumable after a kill.

A checkpoint is written into `.tmp-step-N/` and renamed to `step-N/` only when
complete (rename is atomic on one filesystem), so a run killed at any point
leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

COMPLETE = "trainer_state.json"  # written last inside the temp dir


@dataclass
class TrainState:
    step: int = 0  # the next training step to run
    episodes_seen: int = 0
    episodes_dropped: int = 0


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used."""


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


class CheckpointManager:
    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first (an interrupted temp dir is not one)."""
        if not self.root.is_dir():
            return []
        done = [p for p in self.root.glob("step-*") if (p / COMPLETE).is_file()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, engine, state: TrainState) -> Path:
        final = self.root / f"step-{state.step:06d}"
        tmp = self.root / f".tmp-step-{state.step:06d}"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        engine.save_checkpoint(str(tmp), tag="deepspeed")
        torch.save(rng_state(), tmp / f"rng-rank{_rank()}.pt")
        _barrier()
        if _rank() == 0:
            (tmp / COMPLETE).write_text(json.dumps(asdict(state), indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, engine, path: Path | None = None) -> TrainState:
        path = path or self.latest()
        if path is None:
            raise CheckpointError(f"no complete checkpoint under {self.root}")
        try:
            state = TrainState(**json.loads((path / COMPLETE).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path / COMPLETE} is unreadable: {exc}") from exc
        load_path, _ = engine.load_checkpoint(str(path), tag="deepspeed")
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the model/optimizer state in {path}")
        rng_file = path / f"rng-rank{_rank()}.pt"
        if rng_file.is_file():
            set_rng_state(torch.load(rng_file, weights_only=False))
        return state
