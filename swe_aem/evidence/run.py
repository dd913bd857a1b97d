"""GRPO vs GRPO+AEM on the guessing game, several seeds per arm.

Both arms use the same seeds, hence the same initial weights and the same targets at
every step; they differ only in lam (0 = GRPO). Writes evidence.json (every step of every
run, the summary and the theory check), evidence.md and two PNG plots. `swe-aem evidence`
(swe_aem/commands/evidence.py) runs it; with `--llm`, the LLM arm (swe_aem/evidence/llm.py).
"""

from __future__ import annotations

import json
import resource
import time
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from multiprocessing import Manager
from pathlib import Path
from queue import Queue  # the type a Manager().Queue() proxy mimics

import numpy as np
from scipy import stats
from tqdm import tqdm

from swe_aem.eval.estimators import t_interval
from swe_aem.evidence.arm import RunConfig, train_run
from swe_aem.evidence.game import GameConfig

ARMS = ("grpo", "grpo+aem")


@dataclass(frozen=True)
class EvidenceConfig:
    run: RunConfig = field(default_factory=RunConfig)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    lam: float = 1.0
    threshold: float = 0.5  # success rate for "steps to threshold"
    window: int = 50  # trailing moving-average window for that
    final_frac: float = 0.1  # "final success" = mean over this last share of steps


def quick_config() -> EvidenceConfig:
    """A CI-sized run (seconds): smaller game, fewer steps, still 3 seeds per arm."""
    game = GameConfig(n_targets=7, base=3, digits=2, turns=3)
    return EvidenceConfig(
        run=RunConfig(game=game, steps=150, tasks=8, group=4, lr=3e-3), seeds=(0, 1, 2), window=20
    )


def _cpu_s() -> float:
    """CPU seconds of this process plus its reaped children (the pool's workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # parallel runs, one core each


def _job(run_cfg: RunConfig, seed: int, lam: float, queue: Queue | None = None) -> list[dict]:
    progress = queue.put if queue is not None else None
    return [asdict(s) for s in train_run(run_cfg, seed, lam, progress=progress)]


def run_all(cfg: EvidenceConfig, workers: int) -> dict[str, dict[int, list[dict]]]:
    """Train every (arm, seed); returns arm -> seed -> per-step logs."""
    jobs = [(arm, seed) for seed in cfg.seeds for arm in ARMS]
    lam = {"grpo": 0.0, "grpo+aem": cfg.lam}
    out: dict[str, dict[int, list[dict]]] = {arm: {} for arm in ARMS}
    bar = tqdm(total=len(jobs) * cfg.run.steps, desc=f"evidence ({len(jobs)} runs)", unit="step")
    if workers <= 1:
        for arm, seed in jobs:
            out[arm][seed] = [asdict(s) for s in train_run(cfg.run, seed, lam[arm], progress=bar.update)]
    else:
        with Manager() as manager, ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
            queue = manager.Queue()
            futures = {pool.submit(_job, cfg.run, seed, lam[arm], queue): (arm, seed) for arm, seed in jobs}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5)
                while not queue.empty():
                    bar.update(queue.get())
                for fut in done:
                    arm, seed = futures[fut]
                    out[arm][seed] = fut.result()
                    bar.write(f"{arm} seed {seed}: done, last-step success {out[arm][seed][-1]['success']:.2f}")
    bar.close()
    return {arm: dict(sorted(runs.items())) for arm, runs in out.items()}


def _series(runs: dict[int, list[dict]], key: str) -> np.ndarray:
    """[seeds, steps] array of one logged field."""
    return np.array([[s[key] for s in logs] for logs in runs.values()], dtype=float)


def steps_to_threshold(success: np.ndarray, threshold: float, window: int) -> int | None:
    """First step count at which the trailing `window`-step mean success reaches threshold."""
    window = min(window, success.size)
    ma = np.convolve(success, np.ones(window) / window, mode="valid")
    hit = np.flatnonzero(ma >= threshold)
    return int(hit[0] + window) if hit.size else None


def summarize_arm(runs: dict[int, list[dict]], cfg: EvidenceConfig) -> dict:
    succ = _series(runs, "success")
    ent = _series(runs, "entropy")
    tail = max(1, round(cfg.final_frac * succ.shape[1]))
    final = succ[:, -tail:].mean(axis=1)
    reach = [steps_to_threshold(s, cfg.threshold, cfg.window) for s in succ]
    reached = [r for r in reach if r is not None]
    return {
        "final_success_per_seed": final.tolist(),
        "final_success_mean": float(final.mean()),
        "final_success_std": float(final.std(ddof=1)) if final.size > 1 else 0.0,
        "mean_success_all_steps": float(succ.mean()),
        "final_entropy_mean": float(ent[:, -tail:].mean()),
        "steps_to_threshold_per_seed": reach,
        "seeds_reaching_threshold": len(reached),
        "steps_to_threshold_mean": float(np.mean(reached)) if reached else None,
    }


def paired_final_diff(summary: dict) -> dict:
    """Final success of GRPO+AEM minus GRPO, seed by seed (the arms share seeds), with a t-interval."""
    diff = np.subtract(summary["grpo+aem"]["final_success_per_seed"], summary["grpo"]["final_success_per_seed"])
    return {
        "per_seed": diff.tolist(),
        "mean": float(diff.mean()),
        "t_interval_95": list(t_interval(diff)) if diff.size > 1 else None,
        "aem_better_seeds": int((diff > 0).sum()),
    }


def _corr(x: np.ndarray, y: np.ndarray) -> dict:
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson_r": None, "p_value": None, "n": int(x.size)}
    r = stats.pearsonr(x, y)
    return {"pearson_r": float(r.statistic), "p_value": float(r.pvalue), "n": int(x.size)}


# measured entropy change -> the predicted drift it is checked against
MEASURES = {
    "adam_step": ("entropy_change", "drift_pred"),
    "sgd_probe_plain": ("probe_change_plain", "drift_base"),
    "sgd_probe_aem": ("probe_change_aem", "drift_aem"),
}


def _sign_agreement(pred: np.ndarray, measured: np.ndarray) -> float | None:
    nz = pred != 0
    return float((np.sign(pred[nz]) == np.sign(measured[nz])).mean()) if nz.any() else None


def theory_check(runs: dict[int, list[dict]]) -> dict:
    """Measured per-step entropy change against the predicted drift, pooled over seeds and steps.

    adam_step: the training update itself (Adam; its momentum also carries earlier batches)
    against the drift of the advantages trained on. sgd_probe_*: an isolated SGD step on this
    batch alone, with the plain and with the AEM advantages, each against its own drift.
    aem_effect: on the same states, (AEM probe - plain probe) against (AEM drift - plain
    drift); the theory says AEM raises entropy when negatives dominate, lowers it otherwise.
    """
    col = {k: _series(runs, k).ravel() for k in runs[next(iter(runs))][0]}
    out: dict = {}
    for name, (measured, predicted) in MEASURES.items():
        out[name] = {
            **_corr(col[predicted], col[measured]),
            "sign_agreement": _sign_agreement(col[predicted], col[measured]),
        }
    d_meas = col["probe_change_aem"] - col["probe_change_plain"]
    d_pred = col["drift_aem"] - col["drift_base"]
    out["aem_effect"] = {**_corr(d_pred, d_meas), "sign_agreement": _sign_agreement(d_pred, d_meas)}
    neg_phase = col["frac_neg_adv"] > col["frac_pos_adv"]
    out["phases"] = {}
    for phase, sel in (("negatives_dominate", neg_phase), ("positives_dominate", ~neg_phase)):
        out["phases"][phase] = {"steps": int(sel.sum())} | {
            f"mean_{k}": float(v[sel].mean()) if sel.any() else None
            for k, v in (("aem_effect_measured", d_meas), ("aem_effect_predicted", d_pred),
                         ("adam_step", col["entropy_change"]), ("drift_pred", col["drift_pred"]))
        }
    return out


def _fmt_p(p: float | None) -> str:
    """p-values below float range print as a bound, not as a misleading 0."""
    return "n/a" if p is None else "<1e-300" if p == 0 else f"{p:.2g}"


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None else format(x, spec)


def evidence_markdown(rec: dict) -> str:
    cfg, summ, th = rec["config"], rec["summary"], rec["theory"]
    g, r = cfg["run"]["game"], cfg["run"]
    lines = [
        "## Small-scale evidence: GRPO vs GRPO + AEM",
        "",
        (f"Task: guessing game, hidden target in [0, {g['n_targets']}), {g['turns']} turns, each response "
        f"= {g['digits']} tokens (a base-{g['base']} guess), observation 'higher'/'lower' between turns, "
        "reward 1 only for a hit. Policy: a one-layer GRU "
        f"(hidden {r['hidden']}) trained from scratch (no pretrained model), {r['steps']} steps of "
        f"{r['tasks']} targets x {r['group']} episodes, Adam lr {r['lr']}, advantages "
        f"'{r['estimator']}', PPO-clip loss '{r['loss_agg']}', AEM at turn level with lam = {cfg['lam']}. "
        f"Seeds {cfg['seeds']} for both arms (same initial weights and targets). "
        f"Wall time {rec['wall_s']:.0f} s with {rec['workers']} worker(s), {rec['cpu_s']:.0f} CPU s."),
        "",
        (f"| arm | final success (mean +- std over seeds) | mean success, all steps | final entropy "
        f"(nats/token) | seeds reaching {cfg['threshold']} | steps to {cfg['threshold']} "
        f"({cfg['window']}-step mean) |"),
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        s = summ[arm]
        lines.append(
            f"| {arm} | {s['final_success_mean']:.3f} +- {s['final_success_std']:.3f} | "
            f"{s['mean_success_all_steps']:.3f} | {s['final_entropy_mean']:.3f} | "
            f"{s['seeds_reaching_threshold']}/{len(cfg['seeds'])} | {_fmt(s['steps_to_threshold_mean'], '.0f')} |"
        )
    d = rec["paired_final_diff"]
    ci = d["t_interval_95"]
    lines += [
        "",
        f"Paired by seed, final success of GRPO+AEM minus GRPO: {d['mean']:+.3f} "
        + (f"(95% t-interval over seeds [{ci[0]:+.3f}, {ci[1]:+.3f}]); " if ci else "; ")
        + f"AEM better on {d['aem_better_seeds']} of {len(d['per_seed'])} seeds.",
    ]
    lines += [
        "",
        ("Theory check: change of response entropy per step on the batch's own states (before vs "
        "after a step) against the predicted drift sum_i A_i (S_i - mean S) / R (S = response "
        "surprisal, mean over the group's pooled responses), Pearson r pooled over seeds and steps. "
        "'Adam step' is the training update itself; the SGD probes are plain SGD steps of size "
        f"{r['probe_lr']} on this batch's gradient alone, applied to copies, once with the plain and "
        f"once with the AEM advantages (lam = {r['probe_lam']}); 'AEM effect' is AEM probe minus "
        "plain probe against AEM drift minus plain drift, on the same states."),
        "",
        "| arm | measured on | r | sign agreement |",
        "|---|---|---|---|",
    ]
    labels = {"adam_step": "Adam step (advantages trained on)", "sgd_probe_plain": "SGD probe, plain",
              "sgd_probe_aem": "SGD probe, AEM", "aem_effect": "AEM effect (AEM - plain probe)"}
    for arm in ARMS:
        for name, label in labels.items():
            t = th[arm][name]
            lines.append(f"| {arm} | {label} | {_fmt(t['pearson_r'])} (p={_fmt_p(t['p_value'])}, "
                         f"n={t['n']}) | {_fmt(t['sign_agreement'])} |")
    lines += [
        "",
        ("Means per step by phase (negatives dominate: more trajectories with A < 0 than A > 0). "
        "The theory predicts a positive AEM effect while negatives dominate and a negative one after."),
        "",
        "| arm | phase | steps | AEM effect, measured | AEM effect, predicted | Adam-step change |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        for phase, ph in th[arm]["phases"].items():
            lines.append(
                f"| {arm} | {phase.replace('_', ' ')} | {ph['steps']} | "
                f"{_fmt(ph['mean_aem_effect_measured'], '.2e')} | {_fmt(ph['mean_aem_effect_predicted'], '.2e')} | "
                f"{_fmt(ph['mean_adam_step'], '.2e')} |"
            )
    lines += ["", f"Plots: {', '.join(rec['plots'])}.", ""]
    return "\n".join(lines)


def plot_curves(logs: dict[str, dict[int, list[dict]]], cfg: EvidenceConfig, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    w = max(1, cfg.window // 2)
    for arm, color in zip(ARMS, ("tab:blue", "tab:red"), strict=True):
        for ax, key in zip(axes, ("success", "entropy"), strict=True):
            y = _series(logs[arm], key)
            sm = np.array([np.convolve(row, np.ones(w) / w, mode="valid") for row in y])
            x = np.arange(sm.shape[1]) + w
            mean, sd = sm.mean(axis=0), sm.std(axis=0)
            ax.plot(x, mean, color=color, label=f"{arm} (mean of {y.shape[0]} seeds)")
            ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.2)
    axes[0].axhline(cfg.threshold, color="gray", ls=":", lw=1)
    axes[0].set(xlabel="step", ylabel="success rate", title=f"success ({w}-step mean, +- 1 sd over seeds)")
    axes[1].set(xlabel="step", ylabel="nats / token", title="mean response entropy")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_theory(logs: dict[str, dict[int, list[dict]]], path: Path) -> Path:
    """Scatter of measured entropy change against predicted drift: arms x measurements."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {**{k: v for k, v in MEASURES.items()}, "aem_effect": None}
    fig, axes = plt.subplots(len(ARMS), len(panels), figsize=(4.2 * len(panels), 4 * len(ARMS)))
    for row, arm in zip(axes, ARMS, strict=True):
        col = {k: _series(logs[arm], k).ravel() for k in logs[arm][next(iter(logs[arm]))][0]}
        for ax, (name, keys) in zip(row, panels.items(), strict=True):
            if keys is None:
                x = col["drift_aem"] - col["drift_base"]
                y = col["probe_change_aem"] - col["probe_change_plain"]
            else:
                y, x = col[keys[0]], col[keys[1]]
            ax.scatter(x, y, s=3, alpha=0.3)
            ax.axhline(0, color="gray", lw=0.5)
            ax.axvline(0, color="gray", lw=0.5)
            ax.set(xlabel="predicted drift (per response)", ylabel="measured entropy change (nats)",
                   title=f"{arm}: {name.replace('_', ' ')}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_evidence(cfg: EvidenceConfig, out_dir: str | Path, workers: int = 1) -> dict:
    """Train both arms on every seed, write evidence.{json,md} and the plots; return the record."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0, cpu0 = time.perf_counter(), _cpu_s()
    logs = run_all(cfg, workers)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - cpu0
    plots = [plot_curves(logs, cfg, out / "curves.png").name, plot_theory(logs, out / "theory.png").name]
    summary = {arm: summarize_arm(logs[arm], cfg) for arm in ARMS}
    rec = {
        "config": {**asdict(cfg), "seeds": list(cfg.seeds)},
        "policy": "one-layer GRU trained from scratch (not the tiny LLM)",
        "wall_s": wall,
        "cpu_s": cpu,  # this process and its finished workers: the cost without other load
        "workers": workers,
        "summary": summary,
        "paired_final_diff": paired_final_diff(summary),
        "theory": {arm: theory_check(logs[arm]) for arm in ARMS},
        "plots": plots,
        "steps": {arm: {str(seed): runs for seed, runs in logs[arm].items()} for arm in ARMS},
    }
    (out / "evidence.json").write_text(json.dumps(rec))
    (out / "evidence.md").write_text(evidence_markdown(rec))
    return rec
