"""`make bench`: run every benchmark script (scripts/bench_*.py) and collect their JSON.

Each benchmark prints its own side-by-side ratios; this runner saves them all
to runs/bench/<name>.json and prints a one-line status per benchmark.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ON_REQUEST = {"default_run", "model_cost"}  # long, or a download: only when named


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("only", nargs="*", help="benchmark names, e.g. algo sandbox (default: all)")
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    a = p.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if a.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in a.only]
    else:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") not in ON_REQUEST]
    a.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        start = time.perf_counter()
        print(f"== bench {name} ...", flush=True)
        proc = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True)
        took = time.perf_counter() - start
        if proc.returncode != 0:
            failed += 1
            print(f"!! {name} failed after {took:.0f}s:\n{proc.stderr[-2000:]}", flush=True)
            continue
        (a.out / f"{name}.json").write_text(proc.stdout)
        print(proc.stdout, flush=True)
        print(f"== {name} done in {took:.0f}s -> {a.out / (name + '.json')}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
