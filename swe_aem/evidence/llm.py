"""`swe-aem evidence --llm`: GRPO vs GRPO+AEM on the LLM agent, from one SFT warm start.

Every run is the real trainer (`swe-aem train`'s Trainer: rollouts in containers, PPO,
held-out evaluation) started from the same warm-started checkpoint on the tasks it
demonstrated. Both arms of a seed share trainer.seed, hence the same task batches
(`task_batch` is a function of step and seed), and every run evaluates the same held-out
draw (heldout.seed is pinned). The "before" evaluation depends on the checkpoint only, so
only the first run does it. Each arm's seeds are its k held-out runs, compared paired over
instances with `swe-aem compare`'s code. Run again with the same settings, it reuses the
finished runs and resumes a cut-short one from its last checkpoint. Each run trains in a
process of its own, so memory does not pile up run after run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console

from swe_aem.config import Config, ConfigError, load_config
from swe_aem.eval.estimators import Run
from swe_aem.isolate import ChildDiedError, call_in_child
from swe_aem.sft.warm_start import WarmStart

ARMS = ("grpo", "grpo_aem")  # configs/algo/NAME.yaml; the first is the baseline
CURVES = ("reward_mean", "response_entropy_mean", "alpha_max", "alpha_min")
console = Console(stderr=True)


def base_config(overrides: Sequence[str]) -> Config:
    """The settings the arms share (warm start, held-out split), read from the baseline arm."""
    cfg = load_config(ARMS[0], None, list(overrides))
    if cfg.heldout.split is None or cfg.run.replay:
        raise ConfigError("evidence --llm compares held-out resolve rates: it needs heldout.split "
                          "and live rollouts (no run.replay)")
    return cfg


def shared_warm_start(base: Config) -> WarmStart | None:
    """The one SFT checkpoint every run starts from (cached on disk); None when disabled."""
    if not base.warm_start.enabled:
        return None
    from swe_aem.sft.warm_start import warm_start

    return warm_start(base.warm_start, base.model, seed=base.trainer.seed)


def run_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "runs" / f"{arm}-seed{seed}"


def per_run_overrides(base: Config, ws: WarmStart | None, seed: int, steps: int | None,
                      first: bool) -> list[str]:
    """What one run adds to the user's overrides: the warm start, its seed, the pinned
    held-out draw, and the "before" evaluation in the first run only."""
    from swe_aem.sft.warm_start import run_overrides

    drawn = base.trainer.seed if base.heldout.seed is None else base.heldout.seed
    extra = run_overrides(base.warm_start, ws) if ws is not None else []
    extra += [f"trainer.seed={seed}", f"heldout.seed={drawn}", f"heldout.before={str(first).lower()}"]
    return extra + ([f"run.steps={steps}"] if steps is not None else [])


def step_tasks(rd: Path) -> list[list[str]]:
    """The instance ids each step rolled out, from its trajectories: the arms' pairing check."""
    from swe_aem.jsonl import read_jsonl

    return [sorted({row["instance_id"] for _, row in read_jsonl(p)})
            for p in sorted((rd / "trajectories").glob("step-*.jsonl"))]


def after_eval(rd: Path) -> Path:
    """The run's held-out report after its last RL step."""
    return max(rd.glob("heldout/after-step-*/eval.json"))


def run_record(rd: Path, arm: str, seed: int) -> dict:
    from swe_aem.train.metrics import read_metrics

    return {
        "arm": arm, "seed": seed, "run_dir": str(rd), "heldout_after_eval": str(after_eval(rd)),
        "heldout_after": read_metrics(rd, "heldout_after")[-1]["heldout_resolve_rate"],
        "steps": [{"step": r["step"], **{k: r.get(k) for k in CURVES}} for r in read_metrics(rd)],
        "tasks": step_tasks(rd),
    }


def paired_heldout(records: list[dict]) -> tuple[dict[str, list[Run]], list[str]]:
    """Each arm's after-RL held-out runs, seeds in order, on the instances every run kept:
    an instance lost to infrastructure in one run leaves all of them, so they stay paired."""
    from swe_aem.eval.evaluate import EvalError
    from swe_aem.eval.runs import load_runs

    runs = {arm: [r for rec in records if rec["arm"] == arm for r in load_runs(Path(rec["heldout_after_eval"]))]
            for arm in ARMS}
    every = [set(r) for rs in runs.values() for r in rs]
    common = set.intersection(*every)
    if not common:
        raise EvalError("no held-out instance was graded in every run; nothing to compare")
    return ({arm: [{i: r[i] for i in sorted(common)} for r in rs] for arm, rs in runs.items()},
            sorted(set.union(*every) - common))


def _series(records: list[dict], arm: str, key: str, steps: int) -> np.ndarray:
    """[seeds, steps] of one logged value; NaN where a step did not log it (a skipped step)."""
    rows = [rec for rec in records if rec["arm"] == arm]
    y = np.full((len(rows), steps), np.nan)
    for i, rec in enumerate(rows):
        for s in rec["steps"]:
            if s[key] is not None and s["step"] < steps:
                y[i, s["step"]] = s[key]
    return y


def _mean(y: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean over the finite values (NaN where there are none), without numpy's warning."""
    n = np.isfinite(y).sum(axis=axis)
    return np.where(n > 0, np.nansum(y, axis=axis) / np.maximum(n, 1), np.nan)


def plot_curves(records: list[dict], steps: int, path: Path) -> Path:
    """Reward, response entropy and AEM's alpha range per step, mean over seeds per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    x = np.arange(steps)
    for arm, color in zip(ARMS, ("tab:blue", "tab:red"), strict=True):
        n = sum(rec["arm"] == arm for rec in records)
        for ax, key in zip(axes[:2], ("reward_mean", "response_entropy_mean"), strict=True):
            ax.plot(x, _mean(_series(records, arm, key, steps), axis=0), "o-", color=color,
                    label=f"{arm} (mean of {n} seeds)")
        for key, style in (("alpha_max", "o-"), ("alpha_min", "s--")):
            axes[2].plot(x, _mean(_series(records, arm, key, steps), axis=0), style, color=color,
                         label=f"{arm} {key.removeprefix('alpha_')}")
    axes[0].set(xlabel="step", ylabel="reward", title="reward mean")
    axes[1].set(xlabel="step", ylabel="nats / token", title="response entropy mean")
    axes[2].set(xlabel="step", ylabel="alpha", title="AEM alpha max / min (1 = no rescaling)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def evidence_markdown(rec: dict) -> str:
    from swe_aem.eval.compare import comparison_markdown
    from swe_aem.eval.estimators import Comparison

    s, ws, seeds = rec["settings"], rec["warm_start"], rec["settings"]["seeds"]
    start = (f"the SFT warm start {ws['model_dir']} ({len(ws['task_ids'])} demonstrated tasks"
             f"{', cached' if ws['cached'] else ''})" if ws else f"{s['model']} (no warm start)")
    h = s["heldout"]
    lines = [
        "## LLM evidence: GRPO vs GRPO + AEM",
        "",
        (f"Every run starts from {start} and trains {s['steps']} RL step(s); seeds {seeds} for both arms "
         f"(same task batches per seed: {'yes' if rec['paired_batches'] else 'NO'}). Held-out: "
         f"{h['tasks'] or 'all'} tasks of {h['dataset'] or s['dataset']}/{h['split']} drawn with seed "
         f"{h['seed']}, temperature {h['temperature']}, {h['runs']} run(s) per seed. "
         f"Wall time {rec['wall_s']:.0f} s."),
        "",
        f"Held-out resolve rate before RL (the shared checkpoint): {_fmt(rec['heldout_before']['resolve_rate'])}",
        "",
        ("Held-out resolve rate after RL per seed and its mean over seeds; reward and response "
         "entropy (nats/token) are means over steps and seeds."),
        "",
        "| arm | " + " | ".join(f"seed {x}" for x in seeds) + " | mean | reward mean (all steps) "
        "| response entropy mean (all steps) |",
        "|---|" + "---|" * (len(seeds) + 3),
    ]
    for arm in ARMS:
        a = rec["arms"][arm]
        lines.append(f"| {arm} | " + " | ".join(_fmt(v) for v in a["heldout_after_per_seed"])
                     + f" | {_fmt(a['heldout_after_mean'])} | {_fmt(a['reward_mean'])} "
                     f"| {_fmt(a['response_entropy_mean'])} |")
    c = rec["comparison"]
    fields = {k: v for k, v in c.items() if k not in ("run_a", "run_b")}
    lines += ["", "Paired over held-out instances, each arm's seeds as its runs:", "",
              comparison_markdown(Comparison(**fields), c["run_a"], c["run_b"]),
              f"Instances left out of the comparison (lost in some run): {rec['instances_excluded'] or 'none'}.",
              "", f"Curves: {rec['plot']}.", ""]
    return "\n".join(lines)


def run_state(rd: Path, cfg: Config) -> str:
    """"new", "done" (its held-out evaluation after RL is logged) or "cut short", for a run
    folder that must hold this very config: a two-hour comparison that stops half way goes on
    where it stopped, never mixing runs of other settings."""
    from swe_aem.train.metrics import read_metrics
    from swe_aem.train.resolve import recorded_config, resolve_run

    if not rd.exists():
        return "new"
    saved = rd / "config.yaml"
    # as the trainer records it: the settings left null are the preset's
    recorded = resolve_run(cfg).cfg
    if not saved.is_file() or saved.read_text() != recorded_config(recorded):
        raise ConfigError(f"{rd} already exists with other settings; choose another --out")
    done = (rd / "metrics.jsonl").is_file() and read_metrics(rd, "heldout_after")
    return "done" if done else "cut short"


def _train(cfg: Config, rd: Path, resume: bool) -> None:
    from swe_aem.eval.evaluate import write_rollout_report
    from swe_aem.train.loop import Trainer

    Trainer(cfg, rd, resume=resume, heldout_report=write_rollout_report).train()


def train_all(out: Path, seeds: Sequence[int], steps: int | None, overrides: list[str], base: Config,
              ws: WarmStart | None) -> Config:
    """Train every (seed, arm), seed by seed, reusing finished runs and resuming cut-short
    ones (from their last checkpoint), each in a process of its own (six runs in one process
    grew to 15 GB and the fifth was OOM-killed); returns the first run's config."""
    jobs = [(seed, arm) for seed in seeds for arm in ARMS]
    cfgs = [load_config(arm, None, [*overrides, *per_run_overrides(base, ws, seed, steps, first=n == 0)])
            for n, (seed, arm) in enumerate(jobs)]
    states = [run_state(run_dir(out, arm, seed), cfg) for (seed, arm), cfg in zip(jobs, cfgs, strict=True)]
    for n, ((seed, arm), cfg, state) in enumerate(zip(jobs, cfgs, states, strict=True)):
        rd = run_dir(out, arm, seed)
        what = {"new": "", "done": " (done: reused)", "cut short": " (cut short: resumed)"}[state]
        console.print(f"[bold]evidence --llm[/bold] run {n + 1}/{len(jobs)}: {arm}, seed {seed} -> {rd}{what}")
        if state != "done":
            try:
                call_in_child(_train, cfg, rd, state == "cut short", name=f"run {arm}, seed {seed}")
            except ChildDiedError as exc:
                raise ChildDiedError(f"{exc}; rerun the same command to resume it") from None
    return cfgs[0]


def arm_summary(records: list[dict], arm: str, seeds: Sequence[int], steps: int) -> dict:
    after = [next(r["heldout_after"] for r in records if r["arm"] == arm and r["seed"] == s) for s in seeds]
    means = {k: float(_mean(_series(records, arm, k, steps))) for k in ("reward_mean", "response_entropy_mean")}
    return {"heldout_after_per_seed": after, "heldout_after_mean": float(np.mean(after)),
            **{k: v if np.isfinite(v) else None for k, v in means.items()}}  # JSON has no NaN


def run_llm_evidence(out: str | Path, seeds: Sequence[int], steps: int | None = None,
                     overrides: Sequence[str] = (), ws: WarmStart | None = None,
                     base: Config | None = None) -> dict:
    """Train both arms on every seed from the shared warm start (`ws`, else the real one),
    then write evidence_llm.{json,md,png} and one combined held-out eval per arm."""
    from swe_aem.eval.estimators import paired_compare
    from swe_aem.eval.report import write_eval_result
    from swe_aem.train.metrics import read_metrics

    t0 = time.monotonic()
    out, overrides = Path(out), list(overrides)
    base = base or base_config(overrides)
    ws = ws or shared_warm_start(base)
    if ws is not None:
        console.print(f"warm start {'(cached) ' if ws.cached else ''}{ws.model_dir}: "
                      f"{len(ws.task_ids)} demonstrated tasks, the start of every run")
    cfg = train_all(out, seeds, steps, overrides, base, ws)
    records = [run_record(run_dir(out, arm, seed), arm, seed) for seed in seeds for arm in ARMS]
    for r in records:
        console.print(f"{r['arm']} seed {r['seed']}: held-out resolve rate after RL {r['heldout_after']:.3f}")

    runs, excluded = paired_heldout(records)
    evals = {arm: write_eval_result(out / "heldout" / arm, runs[arm], title=f"held-out after RL: {arm}",
                                    meta={"arm": arm, "seeds": list(seeds), "excluded": excluded,
                                          "sources": [r["heldout_after_eval"] for r in records if r["arm"] == arm]})
             for arm in ARMS}
    name_a, name_b = (str(evals[arm]["json"]) for arm in ARMS)
    c = paired_compare(runs[ARMS[0]], runs[ARMS[1]], name_a=name_a, name_b=name_b)
    first = run_dir(out, ARMS[0], seeds[0])
    tasks = {(r["arm"], r["seed"]): r["tasks"] for r in records}
    h = cfg.heldout
    rec = {
        "settings": {"arms": list(ARMS), "seeds": list(seeds), "steps": cfg.run.steps, "overrides": overrides,
                     "model": base.model, "dataset": cfg.run.dataset,
                     "heldout": {"split": h.split, "dataset": h.dataset, "tasks": h.tasks, "runs": h.runs,
                                 "temperature": h.temperature, "seed": h.seed}},
        "warm_start": None if ws is None else {"model_dir": str(ws.model_dir), "task_ids": ws.task_ids,
                                               "cached": ws.cached, "summary": ws.summary},
        "heldout_before": {"run_dir": str(first),
                           "resolve_rate": read_metrics(first, "heldout_before")[0]["heldout_resolve_rate"]},
        "paired_batches": all(tasks[ARMS[0], s] == tasks[ARMS[1], s] for s in seeds),
        "arms": {arm: {"heldout_eval": str(evals[arm]["json"]), **arm_summary(records, arm, seeds, cfg.run.steps)}
                 for arm in ARMS},
        "comparison": {"run_a": name_a, "run_b": name_b, **c.to_dict()},
        "instances_excluded": excluded,
        "runs": records,
        "plot": plot_curves(records, cfg.run.steps, out / "evidence_llm.png").name,
        "wall_s": time.monotonic() - t0,
    }
    (out / "evidence_llm.json").write_text(json.dumps(rec, indent=1))
    (out / "evidence_llm.md").write_text(evidence_markdown(rec))
    return rec
