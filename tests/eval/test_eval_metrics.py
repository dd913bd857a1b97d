"""Pass@k, McNemar, bootstrap and t-intervals against exact / hand-computed values."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from swe_aem.eval.estimators import (
    bootstrap_mean_ci,
    check_same_instances,
    mcnemar_exact,
    paired_compare,
    pass_at_k,
    pass_k_values,
    summarize_runs,
    t_interval,
)


def _pass_at_k_enumerated(n: int, c: int, k: int) -> Fraction:
    """Fraction of all k-subsets of n samples (c correct) that contain a correct one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(samples[i] for i in s) for s in subsets), len(subsets))


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_matches_enumeration(n: int) -> None:
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(_pass_at_k_enumerated(n, c, k)), abs=1e-12)


def test_pass_at_k_known_values_and_large_n() -> None:
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    # exact rational for a large case; math.comb is exact, floats would overflow in C(n,k)
    n, c, k = 5000, 37, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-10)
    assert pass_at_k(10**6, 1, 1) == pytest.approx(1e-6, rel=1e-9)
    assert pass_at_k(10**6, 0, 500) == 0.0
    assert pass_at_k(10**6, 10**6 - 3, 4) == 1.0


@pytest.mark.parametrize(
    ("n", "c", "k", "match"),
    [(0, 0, 1, "n >= 1"), (5, 6, 1, "0 <= c <= n"), (5, -1, 1, "0 <= c <= n"),
     (5, 2, 0, "1 <= k <= n"), (5, 2, 6, "1 <= k <= n")],
)
def test_pass_at_k_rejects_invalid(n: int, c: int, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def test_pass_at_k_rejects_non_integers() -> None:
    with pytest.raises(TypeError, match="k must be an int"):
        pass_at_k(5, 2, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="c must be an int"):
        pass_at_k(5, True, 1)  # type: ignore[arg-type]


def test_mcnemar_hand_computed() -> None:
    # b=1, c=5: n=6, P(X<=1) = (1+6)/64, two-sided = 14/64
    assert mcnemar_exact(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_exact(5, 1) == pytest.approx(14 / 64)
    # b=0, c=6: 2/64
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    # b=2, c=8: P(X<=2) = (1+10+45)/1024 -> 112/1024
    assert mcnemar_exact(2, 8) == pytest.approx(112 / 1024)
    # symmetric counts give min(1, 2 * P(X<=b)) = 1 (capped)
    assert mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 2)


def test_t_interval_hand_computed() -> None:
    lo, hi = t_interval([0.4, 0.5, 0.6])
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t_{0.975, df=2} * sd / sqrt(n)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half), abs=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        t_interval([0.5])


def test_bootstrap_degenerate_and_two_point() -> None:
    assert bootstrap_mean_ci(np.full(20, 0.25)) == (0.25, 0.25)
    # two instances with values 0 and 1: resampled means are 0, 1/2, 1 with prob 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% percentiles are exactly 0 and 1
    assert bootstrap_mean_ci(np.array([0.0, 1.0]), n_boot=4000) == (0.0, 1.0)


def test_bootstrap_matches_normal_approximation_and_is_seeded() -> None:
    x = np.array([1.0] * 60 + [0.0] * 140)  # p = 0.3, se = sqrt(.3*.7/200)
    lo, hi = bootstrap_mean_ci(x, n_boot=20_000, seed=1)
    se = math.sqrt(0.3 * 0.7 / 200)
    assert lo == pytest.approx(0.3 - 1.96 * se, abs=0.006)
    assert hi == pytest.approx(0.3 + 1.96 * se, abs=0.006)
    assert bootstrap_mean_ci(x, seed=7) == bootstrap_mean_ci(x, seed=7)
    assert bootstrap_mean_ci(x, seed=7) != bootstrap_mean_ci(x, seed=8)


def test_summarize_runs() -> None:
    ids = ["a", "b", "c", "d"]
    runs = [dict(zip(ids, r)) for r in ([1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0])]
    s = summarize_runs(runs, n_boot=2000)
    assert s.resolve_rate_per_run == [0.25, 0.5, 0.5]
    assert s.pass1_mean == pytest.approx(5 / 12)
    assert s.resolved_counts == [3, 1, 1, 0]
    # Pass@k averaged over instances with c_i = 3, 1, 1, 0 out of n = 3
    assert s.pass_at_k[1] == pytest.approx(np.mean([1, 1 / 3, 1 / 3, 0]))
    assert s.pass_at_k[2] == pytest.approx(np.mean([1, 2 / 3, 2 / 3, 0]))
    assert s.pass_at_k[3] == pytest.approx(0.75)
    assert s.pass1_ci_t_runs is not None and s.pass1_ci_t_runs[0] < s.pass1_mean < s.pass1_ci_t_runs[1]
    lo, hi = s.pass1_ci_bootstrap
    assert 0 <= lo <= s.pass1_mean <= hi <= 1
    assert summarize_runs(runs[:1]).pass1_ci_t_runs is None
    assert pass_k_values(16) == [1, 2, 4, 8, 16] and pass_k_values(6) == [1, 2, 4, 6]


def test_check_same_instances_names_differing_ids() -> None:
    with pytest.raises(ValueError, match=r"only in base \(1\): x;.*only in aem \(2\): y, z"):
        check_same_instances([{"a": 1, "x": 0}, {"a": 1, "y": 0, "z": 1}], ["base", "aem"])


def test_paired_compare_single_runs() -> None:
    ids = [f"i{j}" for j in range(10)]
    a = dict(zip(ids, [1, 1, 0, 0, 0, 0, 0, 0, 1, 1]))
    b = dict(zip(ids, [1, 0, 1, 1, 1, 1, 1, 0, 1, 1]))
    c = paired_compare([a], [b], n_boot=5000)
    assert c.rate_a == 0.4 and c.rate_b == 0.8 and c.diff == pytest.approx(0.4)
    assert c.wins == ["i2", "i3", "i4", "i5", "i6"] and c.losses == ["i1"]
    assert c.mcnemar_p == pytest.approx(14 / 64)
    assert c.diff_ci[0] <= 0.4 <= c.diff_ci[1]
    assert paired_compare([a], [b], n_boot=5000, seed=3) == paired_compare([a], [b], n_boot=5000, seed=3)
    same = paired_compare([a], [a])
    assert same.diff == 0 and same.diff_ci == (0.0, 0.0) and same.mcnemar_p == 1.0


def test_paired_compare_multi_run_scores() -> None:
    a = [{"x": True, "y": False}, {"x": False, "y": False}]
    b = [{"x": True, "y": True}, {"x": True, "y": False}]
    c = paired_compare(a, b, n_boot=100)
    assert c.rate_a == 0.25 and c.rate_b == 0.75 and c.wins == ["x", "y"] and c.losses == []
