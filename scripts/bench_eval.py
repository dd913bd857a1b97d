"""Benchmark of the eval statistics at SWE-bench-Verified size; prints JSON.

- pass_at_k (product form) against the exact big-integer ratio 1 - C(n-c,k)/C(n,k):
  time ratio and largest absolute error, n up to 10^5.
- summarize_runs and paired_compare on 500 instances x 16 runs (the published protocol),
  10,000 bootstrap resamples: wall time each.
"""

from __future__ import annotations

import json
import math
import time
from fractions import Fraction

import numpy as np

from swe_aem.eval.estimators import paired_compare, pass_at_k, summarize_runs


def _timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t


def _exact(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def main() -> None:
    rng = np.random.default_rng(0)
    cases = [(16, 7, 1), (16, 7, 8), (1000, 300, 10), (100_000, 50, 1000), (100_000, 3000, 16)]
    rows = []
    for n, c, k in cases:
        fast, t_fast = _timed(pass_at_k, n, c, k)
        exact, t_exact = _timed(_exact, n, c, k)
        rows.append({"n": n, "c": c, "k": k, "abs_err": abs(fast - float(exact)),
                     "time_product_s": t_fast, "time_exact_bigint_s": t_exact,
                     "speedup": t_exact / max(t_fast, 1e-9)})
    ids = [f"inst-{i:03d}" for i in range(500)]
    p = rng.uniform(0, 1, size=500)
    runs_a = [dict(zip(ids, (rng.uniform(size=500) < p).tolist())) for _ in range(16)]
    runs_b = [dict(zip(ids, (rng.uniform(size=500) < np.clip(p + 0.014, 0, 1)).tolist())) for _ in range(16)]
    summ, t_summ = _timed(summarize_runs, runs_a)
    cmp, t_cmp = _timed(paired_compare, runs_a, runs_b)
    print(json.dumps({
        "pass_at_k": rows,
        "max_abs_err": max(r["abs_err"] for r in rows),
        "summarize_500x16_s": t_summ,
        "paired_compare_500x16_s": t_cmp,
        "example_pass1": summ.pass1_mean,
        "example_diff_ci": cmp.diff_ci,
    }, indent=1))


if __name__ == "__main__":
    main()
