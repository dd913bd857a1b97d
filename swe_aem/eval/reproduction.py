"""The reproduction table: our base vs base+AEM against the published DeepSWE integration.

Published (AEM paper, DeepSWE recipe on Qwen3-32B, SWE-bench-Verified, Pass@1 averaged
over 16 runs): 42.3% -> 43.7%, +1.4 points. We put our two eval results next to these,
with the paired CI of our difference, and say whether the published gain lies inside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from swe_aem.eval.estimators import Comparison, Run, paired_compare, summarize_runs


@dataclass(frozen=True)
class Published:
    base_pass1: float = 42.3  # percent
    aem_pass1: float = 43.7
    dataset: str = "SWE-bench-Verified"
    recipe: str = "DeepSWE (rLLM + R2E-Gym), Qwen3-32B, RLOO"
    runs: int = 16

    @property
    def delta(self) -> float:
        return round(self.aem_pass1 - self.base_pass1, 6)


def reproduction_record(
    base_runs: Sequence[Run],
    aem_runs: Sequence[Run],
    *,
    meta: Mapping | None = None,
    published: Published = Published(),
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict:
    """Both arms' summaries, the paired comparison and the published numbers, in percent."""
    base = summarize_runs(base_runs, n_boot=n_boot, seed=seed)
    aem = summarize_runs(aem_runs, n_boot=n_boot, seed=seed)
    cmp: Comparison = paired_compare(base_runs, aem_runs, name_a="base", name_b="aem", n_boot=n_boot, seed=seed)
    lo, hi = 100 * cmp.diff_ci[0], 100 * cmp.diff_ci[1]
    return {
        "meta": dict(meta or {}),
        "published": {**asdict(published), "delta": published.delta},
        "measured": {
            "base_pass1": 100 * base.pass1_mean,
            "aem_pass1": 100 * aem.pass1_mean,
            "delta": 100 * cmp.diff,
            "delta_ci": [lo, hi],
            "ci_level": cmp.ci_level,
            "wins": len(cmp.wins),
            "losses": len(cmp.losses),
            "sign_test_p": cmp.mcnemar_p,
            "n_instances": cmp.n_instances,
            "runs_base": cmp.runs_a,
            "runs_aem": cmp.runs_b,
        },
        "published_delta_in_ci": bool(lo <= published.delta <= hi),
        "measured_ci_excludes_zero": bool(lo > 0 or hi < 0),
        "base": base.to_dict(),
        "aem": aem.to_dict(),
    }


def reproduction_markdown(rec: Mapping) -> str:
    p, m, meta = rec["published"], rec["measured"], rec["meta"]
    lo, hi = m["delta_ci"]
    setting = ", ".join(f"{k}={v}" for k, v in meta.items()) or "not recorded"
    verdict = (
        "The published +{:.1f} lies inside our CI".format(p["delta"])
        if rec["published_delta_in_ci"]
        else "The published +{:.1f} lies outside our CI".format(p["delta"])
    ) + ("; our CI excludes 0." if rec["measured_ci_excludes_zero"] else "; our CI includes 0 (no significant difference).")
    return "\n".join([
        "## Reproduction: base vs base + AEM",
        "",
        f"Our setting: {setting}.",
        "",
        "| | base Pass@1 (%) | + AEM Pass@1 (%) | delta (points) |",
        "|---|---|---|---|",
        (f"| published ({p['recipe']}, {p['dataset']}, {p['runs']} runs) | {p['base_pass1']:.1f} | "
        f"{p['aem_pass1']:.1f} | {p['delta']:+.1f} |"),
        (f"| measured ({m['n_instances']} instances, {m['runs_base']}/{m['runs_aem']} runs) | "
        f"{m['base_pass1']:.1f} | {m['aem_pass1']:.1f} | {m['delta']:+.2f} "
        f"[{lo:+.2f}, {hi:+.2f}] |"),
        "",
        (f"Paired bootstrap {100 * m['ci_level']:.0f}% CI over instances; per-instance wins/losses of AEM: "
        f"{m['wins']}/{m['losses']}, exact sign (McNemar) test p = {m['sign_test_p']:.4g}."),
        "",
        verdict,
        "",
    ])


def write_reproduction(
    out_dir: str | Path,
    base_runs: Sequence[Run],
    aem_runs: Sequence[Run],
    *,
    meta: Mapping | None = None,
    n_boot: int = 10_000,
    seed: int = 0,
) -> dict[str, Path]:
    """Write reproduction.json and reproduction.md into out_dir."""
    rec = reproduction_record(base_runs, aem_runs, meta=meta, n_boot=n_boot, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "reproduction.json", "markdown": out / "reproduction.md"}
    paths["json"].write_text(json.dumps(rec, indent=1))
    paths["markdown"].write_text(reproduction_markdown(rec))
    return paths
