"""Sandbox benchmark, side by side in one run, on the real Docker engine:

- sandbox start-to-ready p50 / p95 (create + start + first command answered);
- per-command overhead: our SDK path (in-container runner) and SDK exec-per-command
  against a `docker exec` CLI subprocess baseline (ratio; target <= 0.5);
- grading throughput of the local suite (gold patches) with 1 vs 4 workers;
- idle sandboxes one machine holds: memory per idle sandbox and the count that fits
  in this machine's memory (24 GiB here).

Prints one JSON summary on stdout. Default sizes keep it under ~3 minutes on 2 cores.
Usage: .venv/bin/python scripts/bench_sandbox.py [--starts 10] [--commands 30] [--idle 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console

from swe_aem.data import load_instances
from swe_aem.data.local_suite import build_local_suite
from swe_aem.reward.predictions_grading import grade_predictions
from swe_aem.sandbox import Sandbox, SandboxConfig, connect, reap
from swe_aem.sandbox.image_store import build_base

console = Console(stderr=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


def mem_total() -> int:
    return int(Path("/proc/meminfo").read_text().split()[1]) * 1024


def shim_pss(container_id: str) -> int:
    """Proportional memory of the containerd shim that keeps this container (0 if not found)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and f"-id {container_id}" in (proc / "cmdline").read_text().replace("\0", " "):
                rollup = (proc / "smaps_rollup").read_text()
                return next(int(ln.split()[1]) * 1024 for ln in rollup.splitlines() if ln.startswith("Pss:"))
        except OSError:
            continue
    return 0


def bench_start(client, image: str, run_id: str, n: int) -> dict:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        sandbox = Sandbox.start(client, image, run_id=run_id)
        times.append(time.perf_counter() - start)
        sandbox.close()
    return {"n": n, "p50_ms": ms(pct(times, 0.5)), "p95_ms": ms(pct(times, 0.95)),
            "mean_ms": ms(statistics.fmean(times))}


def bench_commands(client, image: str, run_id: str, n: int) -> dict:
    def median(fn) -> float:
        fn()  # warm up
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with Sandbox.start(client, image, run_id=run_id) as fast, \
            Sandbox.start(client, image, run_id=run_id, config=SandboxConfig(use_runner=False)) as slow:
        runner = median(lambda: fast.exec("true"))
        per_exec = median(lambda: slow.exec("true"))
        cli = median(lambda: subprocess.run(["docker", "exec", fast.container.id, "true"],
                                            check=True, capture_output=True))
    return {"n": n, "sdk_runner_ms": ms(runner), "sdk_exec_per_command_ms": ms(per_exec),
            "cli_docker_exec_ms": ms(cli), "ratio_sdk_to_cli": round(runner / cli, 3),
            "ratio_exec_per_command_to_cli": round(per_exec / cli, 3), "target_ratio": 0.5,
            "meets_target": runner / cli <= 0.5}


def bench_grading(instances, run_id: str) -> dict:
    predictions = {i.instance_id: {"instance_id": i.instance_id, "model_name_or_path": "gold",
                                   "model_patch": i.patch} for i in instances}
    out: dict = {"instances": len(instances)}
    for workers in (1, 4):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            report = grade_predictions(instances, predictions, Path(tmp), max_workers=workers,
                                       run_id=f"{run_id}-w{workers}")
            wall = time.perf_counter() - start
        out[f"workers_{workers}"] = {"wall_s": round(wall, 2), "resolved": report["resolved_instances"],
                                     "instances_per_min": round(60 * len(instances) / wall, 1)}
    out["speedup_4_vs_1"] = round(out["workers_1"]["wall_s"] / out["workers_4"]["wall_s"], 2)
    return out


def bench_idle(client, image: str, run_id: str, n: int) -> dict:
    """Memory of idle sandboxes: container cgroup (rss, page cache excluded) + its shim's PSS."""
    sandboxes = []
    try:
        for _ in range(n):
            sandboxes.append(Sandbox.start(client, image, run_id=run_id))
        time.sleep(2)
        cgroup, shims = [], []
        for sandbox in sandboxes:
            stats = sandbox.container.stats(stream=False)["memory_stats"]
            cgroup.append(stats.get("usage", 0) - stats.get("stats", {}).get("cache", 0))
            shims.append(shim_pss(sandbox.container.id))
    finally:
        for sandbox in sandboxes:
            sandbox.close()
    per_sandbox = statistics.fmean(c + s for c, s in zip(cgroup, shims))
    reserve = 2 << 30  # keep 2 GiB for the OS, dockerd and the trainer's own process
    return {
        "n": n,
        "memory_per_sandbox_mib": round(per_sandbox / 2**20, 2),
        "container_mib": round(statistics.fmean(cgroup) / 2**20, 2),
        "shim_pss_mib": round(statistics.fmean(shims) / 2**20, 2),
        "machine_memory_gib": round(mem_total() / 2**30, 1),
        "idle_sandboxes_that_fit_by_memory": int((mem_total() - reserve) // per_sandbox),
        "note": "idle = started, runner up, nothing run; an episode's tests add their own peak",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--commands", type=int, default=30)
    parser.add_argument("--idle", type=int, default=16)
    parser.add_argument("--skip-grading", action="store_true")
    args = parser.parse_args()

    client = connect()
    build_base(client)
    build_local_suite(client)
    instances = load_instances("local")
    image = instances[0].image
    run_id = f"bench-{uuid.uuid4().hex[:6]}"
    summary: dict = {"docker": client.version().get("Version"), "image": image}
    try:
        with console.status("sandbox start-to-ready"):
            summary["start_to_ready"] = bench_start(client, image, run_id, args.starts)
        with console.status("per-command overhead: SDK vs docker exec CLI"):
            summary["per_command"] = bench_commands(client, image, run_id, args.commands)
        if not args.skip_grading:
            console.print("grading throughput, 1 vs 4 workers")
            summary["grading"] = bench_grading(instances, run_id)
        with console.status(f"memory of {args.idle} idle sandboxes"):
            summary["idle"] = bench_idle(client, image, run_id, args.idle)
    finally:
        reap(run_id, client=client)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
