"""Learning-rate schedules, by RL step (pure: a step number in, a learning-rate factor out).

The schedule's clock is the RL step (`TrainState.step`), not the optimizer step: how many
optimizer steps an RL step takes varies with `trainer.mini_batches`, `trainer.ppo_epochs`
and the steps skipped for want of signal (none), so a schedule over optimizer steps would
not know where it ends. A pure function of the step is also what makes it resumable: a
resumed run sets each step's rate from the step it is at, the rate of the run it resumes.

DeepSpeed's schedulers (WarmupLR, WarmupDecayLR, WarmupCosineLR) are not used: handed to
the engine they step once per optimizer step, and stepped by hand they cannot express a
warmup of 0 or 1 steps (`warmup_num_steps` is raised to at least 2) and train their first
step at `warmup_min_ratio`, 0 by default: a DeepSWE step of 512 episodes at lr 0.
"""

from __future__ import annotations

import math
from typing import Literal

Scheduler = Literal["constant", "linear", "cosine"]
LR_SCHEDULERS: tuple[str, ...] = ("constant", "linear", "cosine")


def lr_factor(step: int, total_steps: int, scheduler: str = "constant", warmup_steps: int = 0,
              min_ratio: float = 0.0) -> float:
    """The learning rate of RL step `step` (0-based) as a fraction of `trainer.lr`.

    Warmup: step s < W trains at (s + 1) / W (the first step at 1 / W, step W - 1 at the
    full rate; never at 0). Then `constant` stays at 1; `linear` and `cosine` fall from 1 at
    step W towards `min_ratio`, reaching it as the run ends (progress (s - W) / (S - W) for a
    run of S steps, as Hugging Face's schedules count): linearly, or as (1 + cos(pi p)) / 2.
    """
    if scheduler not in LR_SCHEDULERS:
        raise ValueError(f"unknown learning-rate scheduler {scheduler!r}; use one of {LR_SCHEDULERS}")
    if step < 0 or warmup_steps < 0 or total_steps < 1:
        raise ValueError(f"bad schedule position: step {step}, warmup {warmup_steps}, total {total_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1] (got {min_ratio})")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    shape = 1.0 - progress if scheduler == "linear" else (1.0 + math.cos(math.pi * progress)) / 2.0
    return min_ratio + (1.0 - min_ratio) * shape
