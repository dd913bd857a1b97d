"""Eval results on disk: JSON (the record), Markdown (for people) and a PNG plot.

`swe-aem report` (swe_aem/commands/report.py) renders run files with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from swe_aem.eval.estimators import EvalSummary, Run, summarize_runs


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def summary_markdown(s: EvalSummary, title: str = "Evaluation") -> str:
    """Markdown table of an eval summary (percentages)."""
    lvl = f"{100 * s.ci_level:.0f}%"
    lines = [
        f"## {title}",
        "",
        f"{s.n_instances} instances, {s.n_runs} run(s).",
        "",
        "| metric | value (%) |",
        "|---|---|",
        f"| Pass@1 (mean over runs) | {_pct(s.pass1_mean)} |",
        (f"| {lvl} CI, bootstrap over instances ({s.n_boot} resamples, seed {s.seed}) | "
        f"[{_pct(s.pass1_ci_bootstrap[0])}, {_pct(s.pass1_ci_bootstrap[1])}] |"),
    ]
    if s.pass1_ci_t_runs is not None:
        lo, hi = s.pass1_ci_t_runs
        lines.append(f"| {lvl} CI, t-interval over runs (run-to-run noise only) | [{_pct(lo)}, {_pct(hi)}] |")
    lines += [f"| Pass@{k} (unbiased) | {_pct(v)} |" for k, v in sorted(s.pass_at_k.items())]
    lines += [
        "",
        "| run | resolve rate (%) |",
        "|---|---|",
        *[f"| {i} | {_pct(r)} |" for i, r in enumerate(s.resolve_rate_per_run)],
        "",
    ]
    return "\n".join(lines)


def by_group(runs: Sequence[Run], groups: Mapping[str, str]) -> dict[str, dict[str, float]]:
    """Resolve rate per group of instances (a language): for each group its instance count and
    Pass@1, the mean over runs of the share of its instances resolved. Pure."""
    members: dict[str, list[str]] = {}
    for instance in sorted(runs[0]) if runs else []:
        members.setdefault(groups.get(instance, "unknown"), []).append(instance)
    return {g: {"n_instances": len(ids),
                "pass1_mean": sum(sum(r[i] for i in ids) / len(ids) for r in runs) / len(runs)}
            for g, ids in sorted(members.items())}


def group_markdown(groups: Mapping[str, Mapping[str, float]], name: str = "language") -> str:
    """Markdown table of by_group's result."""
    return "\n".join([f"| {name} | instances | Pass@1 (%) |", "|---|---|---|",
                      *[f"| {g} | {int(v['n_instances'])} | {_pct(v['pass1_mean'])} |" for g, v in groups.items()],
                      ""])


def plot_summary(s: EvalSummary, path: Path, title: str = "Evaluation") -> Path:
    """Two panels: resolve rate per run with the Pass@1 mean and CI, and Pass@k against k."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    runs = range(s.n_runs)
    ax1.bar(runs, [100 * r for r in s.resolve_rate_per_run], color="tab:blue", alpha=0.7, label="run")
    ax1.axhline(100 * s.pass1_mean, color="k", label=f"Pass@1 {_pct(s.pass1_mean)}%")
    lo, hi = s.pass1_ci_bootstrap
    ax1.axhspan(100 * lo, 100 * hi, color="k", alpha=0.1, label=f"{100 * s.ci_level:.0f}% CI (instances)")
    ax1.set(xlabel="run", ylabel="resolve rate (%)", title="resolve rate per run", xticks=list(runs))
    ax1.legend(fontsize=8)
    ks = sorted(s.pass_at_k)
    ax2.plot(ks, [100 * s.pass_at_k[k] for k in ks], "o-")
    ax2.set(xlabel="k", ylabel="Pass@k (%)", title="Pass@k (unbiased)", xscale="log", xticks=ks, ylim=(0, 100))
    ax2.set_xticklabels([str(k) for k in ks])
    fig.suptitle(f"{title}: {s.n_instances} instances")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_eval_result(
    out_dir: str | Path,
    runs: Sequence[Run],
    *,
    meta: Mapping | None = None,
    title: str = "Evaluation",
    n_boot: int = 10_000,
    seed: int = 0,
    languages: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Summarise k graded runs and write eval.json, eval.md and eval.png into out_dir;
    with `languages` (instance id -> language) the resolve rate per language too.

    eval.json keeps the per-instance booleans of every run (`runs`), so any later
    statistic (`swe-aem compare`, the reproduction table) is recomputed from the record.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize_runs(runs, n_boot=n_boot, seed=seed)
    record = {
        "meta": dict(meta or {}),
        "summary": summary.to_dict(),
        "runs": [{i: bool(r[i]) for i in sorted(r)} for r in runs],
    }
    markdown = summary_markdown(summary, title)
    if languages is not None:
        record["by_language"] = by_group(runs, languages)
        markdown += "\n" + group_markdown(record["by_language"])
    paths = {"json": out / "eval.json", "markdown": out / "eval.md", "plot": out / "eval.png"}
    paths["json"].write_text(json.dumps(record, indent=1))
    paths["markdown"].write_text(markdown)
    plot_summary(summary, paths["plot"], title)
    return paths
