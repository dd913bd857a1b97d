"""Per-step metrics: JSONL (the record) and the trackers of `run.loggers` (TensorBoard by
default; W&B, MLflow), plus plots."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from swe_aem import hostmem
from swe_aem.agent.trajectory import TERMINATIONS, Episode
from swe_aem.jsonl import read_jsonl
from swe_aem.train.batch import Sample, TurnLayout, groups_with_signal_ids
from swe_aem.train.loggers import open_trackers


@contextmanager
def timed(metrics: dict[str, float], name: str) -> Iterator[None]:
    """One named phase of a step, timed into `metrics["time_<name>_s"]` (the step's time
    split: rollout, forward, credit, update, weight_sync, checkpoint, heldout) and its peak
    resident memory into `metrics["host_peak_<name>_gib"]` (the process's, every thread's)."""
    t0 = time.perf_counter()
    try:
        with PHASES.phase(name):
            yield
    finally:
        metrics[f"time_{name}_s"] = time.perf_counter() - t0
        if name in PHASES.last:
            metrics[f"host_peak_{name}_gib"] = PHASES.last[name] / hostmem.GIB


PHASES = hostmem.PhaseMeter()  # this process's phases (the trainer's, on every rank)


def batch_metrics(episodes: Sequence[Episode], samples: Sequence[Sample], layout: TurnLayout, fwd: Any,
                  credit: Any, advantage: str) -> dict[str, float]:
    """What a trained step's batch was: rewards and resolve rate, groups with signal (as the
    estimator sees them), the trainer's entropy and its mismatch with the rollout, AEM's
    diagnostics, sizes and every termination's count. `fwd` is the update's ForwardStats,
    `credit` its Credit."""
    rewards = [s.reward for s in samples]
    by_task: dict[int, list[float]] = {}
    for s in samples:
        by_task.setdefault(s.group, []).append(s.reward)
    m = dict(credit.diagnostics)
    m.update({
        "reward_mean": float(np.mean(rewards)),
        "resolve_rate": float(np.mean([r == 1.0 for r in rewards])),
        "task_any_resolved": float(np.mean([max(v) == 1.0 for v in by_task.values()])),
        "groups_with_signal": float(len(groups_with_signal_ids(
            rewards, [s.group for s in samples], [s.trainable for s in samples], advantage))),
        "response_entropy_mean": float(fwd.turn_entropy.mean()) if layout.num_turns else 0.0,
        "rollout_trainer_kl": fwd.rollout_kl,
        "is_weight_min": fwd.is_weight_min,
        "is_weight_max": fwd.is_weight_max,
        "episodes": float(len(episodes)),
        "trajectories_filtered": float(sum(not s.trainable for s in samples)),
        "turns_mean": float(layout.num_turns / len(samples)),
        "response_tokens": float(sum(sum(s.loss_mask) for s in samples)),
    })
    for term in TERMINATIONS:
        m[f"term_{term}"] = float(sum(e.termination == term for e in episodes))
    return m


def thinking_metrics(episodes: Sequence[Episode]) -> dict[str, float]:
    """How much of a step's sampling is thinking (Turn.thinking_tokens; all 0 with thinking
    off): per-turn thinking tokens (mean, max), their share of the response tokens, and their
    share of the context (the episodes' whole token sequences, prompts included), which long
    reasoning kept in later turns' prompts fills. Thinking tokens are trained like the rest of
    the response, so these say how much of the loss and of AEM's entropy they make up."""
    turns = [t for ep in episodes for t in ep.turns]
    thinking = sum(t.thinking_tokens for t in turns)
    response = sum(len(t.response_ids) for t in turns)
    context = sum(len(t.prompt_ids) + len(t.response_ids) for t in turns)
    return {
        "thinking_tokens_mean": thinking / len(turns) if turns else 0.0,
        "thinking_tokens_max": float(max((t.thinking_tokens for t in turns), default=0)),
        "thinking_share_response": thinking / response if response else 0.0,
        "thinking_share_context": thinking / context if context else 0.0,
    }


def episode_row(ep: Episode) -> dict[str, Any]:
    """One episode as a tracker's table row (what the viewer's table shows, token ids left out)."""
    versions = [t.policy_version for t in ep.turns]
    return {"task": ep.instance_id, "sample": ep.sample_index, "reward": ep.reward,
            "termination": ep.termination, "grade_status": ep.grade_status, "turns": len(ep.turns),
            "tokens": sum(len(t.response_ids) for t in ep.turns),
            "version_min": min(versions, default=0), "version_max": max(versions, default=0)}


class MetricsLogger:
    """A run's metrics: metrics.jsonl always (rank 0), and the trackers `run.loggers` names
    (swe_aem/train/loggers.py: tensorboard, wandb, mlflow)."""

    def __init__(self, run_dir: Path, enabled: bool = True, trackers: Sequence[str] = ("tensorboard",),
                 name: str = "", config: Mapping[str, Any] | None = None):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.trackers = open_trackers(trackers, Path(run_dir), name or Path(run_dir).name,
                                      config or {}) if enabled else []

    def log(self, step: int, metrics: dict[str, float], kind: str = "train") -> None:
        """One row of metrics.jsonl; rows other than a training step's carry their `kind`
        (e.g. `heldout_before`), so a step can have a training row and an evaluation row."""
        if not self.enabled:
            return
        row = {"step": step, **({} if kind == "train" else {"kind": kind}),
               **{k: float(v) for k, v in metrics.items()}}
        with self.path.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        for tracker in self.trackers:
            tracker.log(step, metrics, kind)

    def table(self, step: int, name: str, rows: Sequence[Mapping[str, Any]]) -> None:
        """A table of the step (its episodes) for the trackers that keep tables."""
        for tracker in self.trackers if self.enabled else ():
            tracker.table(step, name, rows)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


def read_metrics(run_dir: Path, kind: str = "train") -> list[dict]:
    """Rows of metrics.jsonl of one kind (training steps by default, or e.g.
    `heldout_before`); a step logged twice (a resumed run) keeps its last row."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a training run folder?")
    rows: dict[int, dict] = {}
    for _, row in read_jsonl(path):
        if row.get("kind", "train") == kind:
            rows[int(row["step"])] = row
    return [rows[k] for k in sorted(rows)]


PLOTS = [
    ("reward_mean", "reward mean"), ("response_entropy_mean", "response entropy (nats)"),
    ("alpha_max", "AEM alpha max / min"), ("drift_base", "predicted entropy drift"),
    ("clip_frac", "clip fraction"), ("rollout_trainer_kl", "KL rollout vs trainer"),
    ("tokens_per_s", "trainer tokens/s"), ("time_rollout_s", "time split (s)"),
    ("groups_kept", "groups with signal (trained / kept / dropped), step skipped"),
    ("loss", "policy loss"), ("task_any_resolved", "tasks with a resolved sample"),
]
HELDOUT_KINDS = ("heldout_before", "heldout_after")


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the training curves of a run to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(3, 4, figsize=(20, 11))
    for ax, (key, title) in zip(axes.flat, PLOTS):
        pairs = {"alpha_max": ["alpha_max", "alpha_min", "alpha_mean"],
                 "drift_base": ["drift_base", "drift_aem"],
                 "groups_kept": ["groups_with_signal", "groups_kept", "groups_dropped",
                                 "optimizer_step_skipped"],
                 "time_rollout_s": ["time_rollout_s", "time_forward_s",
                                    "time_update_s", "time_weight_sync_s"]}.get(key, [key])
        for k in pairs:
            ys = [r.get(k, float("nan")) for r in rows]
            ax.plot(steps, ys, marker="o", label=k)
        ax.set_title(title)
        ax.set_xlabel("step")
        if len(pairs) > 1:
            ax.legend(fontsize=7)
    ax = axes.flat[-1]  # held-out resolve rate: the warm start (before RL) and after the last step
    for kind in HELDOUT_KINDS:
        pts = read_metrics(run_dir, kind)
        ax.plot([r["step"] for r in pts], [r["heldout_resolve_rate"] for r in pts], marker="s",
                linestyle="", markersize=9, label=kind.removeprefix("heldout_") + " RL")
    ax.set_title("held-out resolve rate")
    ax.set_xlabel("RL steps done")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = out or Path(run_dir) / "metrics.png"
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
