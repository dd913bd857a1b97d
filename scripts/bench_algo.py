"""Benchmark of the algorithm core (issue 2), side by side in one run.

1. Chunked log-prob + entropy vs the naive full-logits computation, forward
   and backward, T tokens x V vocab, each measurement in its own subprocess so
   that peak RSS belongs to that computation alone.
2. aem_weights on 64 tasks x 8 trajectories x 50 turns.

Prints one JSON object; ratios are chunked / naive.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _measure(impl: str, tokens: int, vocab: int, hidden: int, chunk: int) -> dict:
    import torch

    from swe_aem.algo.entropy import chunked_logprobs_and_entropy, naive_logprobs_and_entropy

    torch.manual_seed(0)
    h = (torch.randn(tokens, hidden) * 0.5).requires_grad_()
    w = (torch.randn(vocab, hidden) * 0.02).requires_grad_()
    y = torch.randint(0, vocab, (tokens,))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if impl == "chunked":
        lp, _ = chunked_logprobs_and_entropy(h, w, y, chunk_size=chunk)
    else:
        lp, _ = naive_logprobs_and_entropy(h, w, y)
    fwd = time.perf_counter() - start
    lp.sum().backward()
    total = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"impl": impl, "forward_s": fwd, "fwd_bwd_s": total,
            "peak_rss_gib": peak / 2**20, "peak_over_inputs_gib": (peak - base_rss) / 2**20}


def _run_child(impl: str, tokens: int, vocab: int, hidden: int, chunk: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", impl, "--tokens", str(tokens), "--vocab", str(vocab),
         "--hidden", str(hidden), "--chunk", str(chunk)],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        return {"impl": impl, "error": (out.stderr or out.stdout)[-500:], "returncode": out.returncode}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_aem(tasks: int = 64, trajs: int = 8, turns: int = 50, repeats: int = 50) -> dict:
    import torch

    from swe_aem.algo.aem import aem_weights

    n = tasks * trajs * turns
    ent = torch.rand(n)
    group = torch.arange(n) // (trajs * turns)
    aem_weights(ent, group, 1.0)
    start = time.perf_counter()
    for _ in range(repeats):
        aem_weights(ent, group, 1.0)
    ms = (time.perf_counter() - start) / repeats * 1e3
    return {"responses": n, "ms_per_call": ms, "target_ms": 5.0, "ok": ms < 5.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--child")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--vocab", type=int, nargs="*", default=[49152, 151936])
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--chunk", type=int, default=1024)
    a = p.parse_args()
    if a.child:
        print(json.dumps(_measure(a.child, a.tokens, a.vocab[0], a.hidden, a.chunk)))
        return
    report: dict = {"entropy_kernel": [], "aem_weights": bench_aem()}
    for vocab in a.vocab:
        chunked = _run_child("chunked", a.tokens, vocab, a.hidden, a.chunk)
        naive = _run_child("naive", a.tokens, vocab, a.hidden, a.chunk)
        row = {"tokens": a.tokens, "vocab": vocab, "hidden": a.hidden, "chunk": a.chunk,
               "chunked": chunked, "naive": naive}
        if "error" not in chunked and "error" not in naive:
            row["peak_mem_ratio"] = chunked["peak_over_inputs_gib"] / naive["peak_over_inputs_gib"]
            row["time_ratio_fwd_bwd"] = chunked["fwd_bwd_s"] / naive["fwd_bwd_s"]
            row["time_ratio_fwd"] = chunked["forward_s"] / naive["forward_s"]
            row["targets"] = {"peak_mem_ratio<=0.125": row["peak_mem_ratio"] <= 0.125,
                              "time_ratio_fwd_bwd<=1.2": row["time_ratio_fwd_bwd"] <= 1.2}
        report["entropy_kernel"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
