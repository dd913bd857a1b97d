"""Rollout fleet benchmark: 1 vs 2 vs 4 replicas behind the fleet's dispatcher, in one run.

Each replica is a Ray actor with its own stand-in policy server (ScriptedPolicyServer: the
real HTTP routes, not a model) that sleeps `--latency` seconds in every completion to
emulate generation, and its own sandbox pool of real containers (`--concurrency` episodes
in flight per replica, as a server's batch would bound them). Every episode runs `--turns`
shell calls then finishes; grading is off (the containers of the agents only). Weak scaling:
each replica gets the same number of episodes (`--per-replica`), so linear means the same
wall time; episodes per minute and the ratio to linear (rate(n) / (n * rate(1))) are printed
side by side as one JSON object (stdout and runs/bench/fleet.json). Replica start-up is not
timed. On a machine whose cores are few the containers' own work is what bends the curve.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

from swe_aem.agent.settings import AgentConfig
from swe_aem.data import load_instances
from swe_aem.fleet import Fleet, ReplicaSpec
from swe_aem.fleet.stand_in import FINISH, ScriptedStandIn
from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import tool_call_text


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(replicas: int, args: argparse.Namespace, instances: list) -> dict:
    turns = [tool_call_text("xml", "execute_bash", command="true")] * args.turns + [FINISH]
    spec = ReplicaSpec(tokenizer_path=str(load_preset("tiny").default_path), concurrency=args.concurrency,
                       run_id=f"bench-fleet-{uuid.uuid4().hex[:6]}",
                       stand_in=ScriptedStandIn(scripts={"": turns}, latency_s=args.latency))
    # as many tasks as replicas, each sampled per_replica times: the same work per replica
    tasks = [instances[i % len(instances)] for i in range(replicas)]
    config = AgentConfig(max_turns=args.turns + 2, temperature=0.0, tool_call_format="xml")
    t0 = time.perf_counter()
    with Fleet(spec, replicas, cpus_per_replica=1) as fleet:
        start_s = time.perf_counter() - t0
        log(f"{replicas} replica(s) up in {start_s:.0f} s; {replicas * args.per_replica} episodes ...")
        t1 = time.perf_counter()
        result = fleet.rollout(tasks, args.per_replica, config=config)
        wall = time.perf_counter() - t1
        by_replica = dict(sorted(fleet.stats.episodes.items()))
    finished = sum(e.termination == "finished" for e in result.episodes)
    out = {"replicas": replicas, "episodes": len(result.episodes), "finished": finished,
           "dropped": len(result.dropped), "episodes_by_replica": by_replica, "start_s": round(start_s, 1),
           "wall_s": round(wall, 2), "episodes_per_min": round(len(result.episodes) / wall * 60, 2)}
    log(json.dumps(out))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--per-replica", type=int, default=8, help="episodes per replica")
    p.add_argument("--concurrency", type=int, default=2, help="episodes in flight per replica")
    p.add_argument("--turns", type=int, default=4, help="shell calls per episode before finishing")
    p.add_argument("--latency", type=float, default=2.0, help="seconds per completion (generation)")
    p.add_argument("--address", default=None, help="a Ray cluster to run on (default: a local Ray)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/fleet.json"))
    args = p.parse_args()

    import ray

    if args.address:
        ray.init(address=args.address)
    else:  # one logical CPU per replica (their containers are Docker's, not Ray's)
        ray.init(num_cpus=max(args.replicas) + 1, include_dashboard=False, log_to_driver=False)
    instances = load_instances("local")
    try:
        runs = [run(n, args, instances) for n in args.replicas]
    finally:
        ray.shutdown()
    base = runs[0]["episodes_per_min"] / runs[0]["replicas"]
    result = {
        "workload": {"per_replica": args.per_replica, "concurrency_per_replica": args.concurrency,
                     "turns": args.turns + 1, "latency_s_per_turn": args.latency, "grading": False,
                     "stand_in": "ScriptedPolicyServer (not a model)", "containers": "real (local suite)"},
        "episodes_per_min": {str(r["replicas"]): r["episodes_per_min"] for r in runs},
        "ratio_to_linear": {str(r["replicas"]): round(r["episodes_per_min"] / (base * r["replicas"]), 3)
                            for r in runs},
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
