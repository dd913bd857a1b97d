"""Resolve-rate statistics: Pass@k, Pass@1 over runs with confidence intervals, paired tests.

Pure functions over per-instance booleans. A *run* is a mapping instance_id -> resolved;
every statistic that combines runs first checks that they cover the same instances, because
a resolve rate over a different instance set is a different quantity, not a noisier one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

Run = Mapping[str, bool]


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased Pass@k estimate 1 - C(n-c, k)/C(n, k) for n samples of which c are correct.

    Product form, summed in log space so it neither overflows nor loses precision for
    large n: C(n-c,k)/C(n,k) = prod_{i=n-c+1}^{n} (1 - k/i) = prod_{i=0}^{k-1} (1 - c/(n-i)),
    whichever has fewer factors.
    """
    n, c, k = _check_int("n", n), _check_int("c", c), _check_int("k", k)
    if n < 1:
        raise ValueError(f"pass_at_k needs n >= 1 samples, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    if c <= k:
        log_fail = math.fsum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))
    else:
        log_fail = math.fsum(math.log1p(-c / (n - i)) for i in range(k))
    return -math.expm1(log_fail)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c.

    Under H0 the b + c discordant pairs split Binomial(b + c, 1/2); the p-value is twice
    the smaller tail, capped at 1. No discordant pairs means no evidence: p = 1.
    """
    b, c = _check_int("b", b), _check_int("c", c)
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs non-negative counts, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * stats.binom.cdf(min(b, c), n, 0.5)))


def check_same_instances(runs: Sequence[Run], names: Sequence[str] | None = None) -> list[str]:
    """Sorted common instance ids; raises naming the differing ids when the runs disagree."""
    if not runs:
        raise ValueError("no runs given")
    names = list(names) if names is not None else [f"run {i}" for i in range(len(runs))]
    ref = set(runs[0])
    if not ref:
        raise ValueError(f"{names[0]} has no instances")
    for name, run in zip(names[1:], runs[1:], strict=True):
        ids = set(run)
        if ids != ref:
            only_ref, only_run = sorted(ref - ids), sorted(ids - ref)
            raise ValueError(
                f"{names[0]} and {name} cover different instance sets; "
                f"only in {names[0]} ({len(only_ref)}): {_head(only_ref)}; "
                f"only in {name} ({len(only_run)}): {_head(only_run)}"
            )
    return sorted(ref)


def _head(ids: list[str], limit: int = 10) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... (+{len(ids) - limit} more)" if len(ids) > limit else "") if ids else "-"


def resolve_rate(run: Run) -> float:
    """Fraction of the run's instances that were resolved."""
    if not run:
        raise ValueError("resolve_rate of a run with no instances")
    return sum(bool(v) for v in run.values()) / len(run)


def success_matrix(runs: Sequence[Run], names: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(instance ids, bool array [runs x instances]) after checking the instance sets agree."""
    ids = check_same_instances(runs, names)
    return ids, np.array([[bool(run[i]) for i in ids] for run in runs], dtype=bool)


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval for the mean of `values` (needs at least 2 values)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {x.size}")
    half = stats.t.ppf(0.5 + confidence / 2, df=x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def bootstrap_mean_ci(
    per_instance: np.ndarray, *, n_boot: int = 10_000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over instances (resampled with replacement).

    Used both for Pass@1 (per-instance resolve fraction across runs) and for paired
    differences (per-instance B minus A), so instance-to-instance variation, the dominant
    source of uncertainty on a 500-instance benchmark, is what the interval reflects.
    """
    x = np.asarray(per_instance, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap needs a non-empty 1-d array, got shape {x.shape}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


@dataclass
class EvalSummary:
    """What `swe-aem eval` reports for k runs over one instance set (rates in [0, 1])."""

    n_instances: int
    n_runs: int
    resolve_rate_per_run: list[float]
    pass1_mean: float
    # bootstrap over instances of the per-instance resolve fraction (always present)
    pass1_ci_bootstrap: tuple[float, float]
    # t-interval over the k run-level rates: run-to-run sampling noise only (k >= 2)
    pass1_ci_t_runs: tuple[float, float] | None
    pass_at_k: dict[int, float]
    ci_level: float = 0.95
    n_boot: int = 10_000
    seed: int = 0
    instance_ids: list[str] = field(default_factory=list)
    resolved_counts: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["pass_at_k"] = {str(k): v for k, v in self.pass_at_k.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> EvalSummary:
        d = dict(d)
        d["pass_at_k"] = {int(k): float(v) for k, v in d["pass_at_k"].items()}
        d["pass1_ci_bootstrap"] = tuple(d["pass1_ci_bootstrap"])
        if d.get("pass1_ci_t_runs") is not None:
            d["pass1_ci_t_runs"] = tuple(d["pass1_ci_t_runs"])
        return cls(**d)


def _clip01(ci: tuple[float, float]) -> tuple[float, float]:
    return max(0.0, ci[0]), min(1.0, ci[1])


def pass_k_values(n_runs: int) -> list[int]:
    """k = 1, 2, 4, ... up to n_runs, and n_runs itself."""
    ks = [2**i for i in range(n_runs.bit_length()) if 2**i <= n_runs]
    return sorted(set(ks) | {n_runs})


def summarize_runs(
    runs: Sequence[Run],
    names: Sequence[str] | None = None,
    *,
    n_boot: int = 10_000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> EvalSummary:
    """Resolve rate per run, Pass@1 averaged over runs with CIs, and unbiased Pass@k."""
    ids, m = success_matrix(runs, names)
    k_runs = m.shape[0]
    counts = m.sum(axis=0)
    rates = m.mean(axis=1)
    return EvalSummary(
        n_instances=len(ids),
        n_runs=k_runs,
        resolve_rate_per_run=[float(r) for r in rates],
        pass1_mean=float(rates.mean()),
        pass1_ci_bootstrap=bootstrap_mean_ci(m.mean(axis=0), n_boot=n_boot, seed=seed, confidence=ci_level),
        # clipped to [0, 1]: with few runs the t-interval can overshoot the possible range
        pass1_ci_t_runs=_clip01(t_interval(rates, ci_level)) if k_runs >= 2 else None,
        pass_at_k={
            k: float(np.mean([pass_at_k(k_runs, int(c), k) for c in counts]))
            for k in pass_k_values(k_runs)
        },
        ci_level=ci_level,
        n_boot=n_boot,
        seed=seed,
        instance_ids=ids,
        resolved_counts=[int(c) for c in counts],
    )


@dataclass
class Comparison:
    """Paired comparison of B against A over the same instances (rates in [0, 1])."""

    n_instances: int
    runs_a: int
    runs_b: int
    rate_a: float
    rate_b: float
    diff: float  # rate_b - rate_a
    diff_ci: tuple[float, float]
    ci_level: float
    n_boot: int
    seed: int
    wins: list[str]  # instances where B does better than A
    losses: list[str]  # instances where B does worse
    mcnemar_p: float  # exact test on len(wins) vs len(losses)

    def to_dict(self) -> dict:
        return asdict(self)


def paired_compare(
    runs_a: Sequence[Run],
    runs_b: Sequence[Run],
    *,
    name_a: str = "A",
    name_b: str = "B",
    n_boot: int = 10_000,
    seed: int = 0,
    ci_level: float = 0.95,
) -> Comparison:
    """Difference in resolve rate B - A, paired over instances.

    Each side may hold several runs; its per-instance score is the fraction of its runs that
    resolved the instance. Wins/losses are instances where B's score is higher/lower; with one
    run per side these are exactly McNemar's discordant pairs, and the exact test on them is
    McNemar's (in general it is the exact sign test on per-instance differences).
    """
    names = [f"{name_a}[{i}]" for i in range(len(runs_a))] + [f"{name_b}[{i}]" for i in range(len(runs_b))]
    if not runs_a or not runs_b:
        raise ValueError(f"compare needs at least one run per side, got {len(runs_a)} and {len(runs_b)}")
    ids, m = success_matrix([*runs_a, *runs_b], names)
    score_a = m[: len(runs_a)].mean(axis=0)
    score_b = m[len(runs_a) :].mean(axis=0)
    delta = score_b - score_a
    wins = [i for i, d in zip(ids, delta) if d > 0]
    losses = [i for i, d in zip(ids, delta) if d < 0]
    return Comparison(
        n_instances=len(ids),
        runs_a=len(runs_a),
        runs_b=len(runs_b),
        rate_a=float(score_a.mean()),
        rate_b=float(score_b.mean()),
        diff=float(delta.mean()),
        diff_ci=bootstrap_mean_ci(delta, n_boot=n_boot, seed=seed, confidence=ci_level),
        ci_level=ci_level,
        n_boot=n_boot,
        seed=seed,
        wins=wins,
        losses=losses,
        mcnemar_p=mcnemar_exact(len(wins), len(losses)),
    )
