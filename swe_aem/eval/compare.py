"""A paired comparison as Markdown: is B's resolve rate really different from A's?

Paired over instances (both runs must cover the same instances): the difference with a
seeded paired bootstrap CI, the exact McNemar test, and which instances B won or lost.
`swe-aem compare RUN_A RUN_B` (swe_aem/commands/compare.py) prints it.
"""

from __future__ import annotations

from swe_aem.eval.estimators import Comparison


def comparison_markdown(c: Comparison, name_a: str, name_b: str, max_ids: int = 50) -> str:
    """Markdown summary of a paired comparison (rates in percent)."""
    lvl = f"{100 * c.ci_level:.0f}%"

    def ids(xs: list[str]) -> str:
        more = f" ... (+{len(xs) - max_ids} more)" if len(xs) > max_ids else ""
        return (", ".join(f"`{x}`" for x in xs[:max_ids]) + more) if xs else "none"

    return "\n".join([
        f"## {name_b} vs {name_a}",
        "",
        f"{c.n_instances} instances, paired; {c.runs_a} run(s) of A, {c.runs_b} run(s) of B.",
        "",
        "| | resolve rate (%) |",
        "|---|---|",
        f"| A: {name_a} | {100 * c.rate_a:.2f} |",
        f"| B: {name_b} | {100 * c.rate_b:.2f} |",
        f"| B - A | {100 * c.diff:+.2f} |",
        (f"| {lvl} CI (paired bootstrap over instances, {c.n_boot} resamples, seed {c.seed}) | "
        f"[{100 * c.diff_ci[0]:+.2f}, {100 * c.diff_ci[1]:+.2f}] |"),
        f"| exact McNemar p ({len(c.wins)} wins / {len(c.losses)} losses) | {c.mcnemar_p:.4g} |",
        "",
        f"Wins of B ({len(c.wins)}): {ids(c.wins)}",
        "",
        f"Losses of B ({len(c.losses)}): {ids(c.losses)}",
        "",
    ])
