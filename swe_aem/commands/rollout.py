"""`swe-aem rollout`: the agent G times per instance, graded; trajectories and predictions.

Writes DIR/trajectories.jsonl (one episode a line, as each finishes: a crash loses
nothing done), DIR/predictions.jsonl (official SWE-bench format; sample 0, plus
predictions.sampleK.jsonl for K >= 1 since the harness wants one row per instance),
DIR/dropped.jsonl (samples given up on after infrastructure failures) and
DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from swe_aem.agent.settings import AgentConfig
from swe_aem.commands.agent_options import add_agent_arguments, agent_from_args
from swe_aem.data.families import FORMATS

ROLLOUT_AGENT = AgentConfig()  # the agent's settings of `swe-aem rollout` unless a flag says otherwise


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="local", help="'local', a .jsonl/.json/.parquet path or a hub name")
    parser.add_argument("--dataset-format", default=None, choices=FORMATS, help="dataset family (default: from the name or the columns)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--instances", nargs="*", default=None, help="only these instance ids")
    parser.add_argument("--model", default="tiny", help="preset name or a local model folder")
    parser.add_argument("--server-url", default=None,
                        help="use a running server instead of starting one (its served model name: --served-name)")
    parser.add_argument("--served-name", default="policy")
    parser.add_argument("--samples", "-G", type=int, default=1)
    parser.add_argument("--grade-timeout", type=float, default=1800.0, help="seconds for one eval script")
    parser.add_argument("--retries", type=int, default=1,
                        help="times an episode or grading that failed for infrastructure reasons is retried")
    add_agent_arguments(parser, ROLLOUT_AGENT, concurrency=4, sample="sample")
    parser.add_argument("--no-grade", action="store_true", help="skip grading (reward stays null)")
    parser.add_argument("--out", required=True, type=Path)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from swe_aem.agent.harness import open_harness
    from swe_aem.agent.trajectory import write_episodes
    from swe_aem.data import load_instances
    from swe_aem.eval.predictions import Prediction, write_predictions
    from swe_aem.jsonl import write_jsonl
    from swe_aem.policy.models import resolve_model
    from swe_aem.reward import grader

    if args.samples < 1 or args.max_turns < 1 or args.concurrency < 1 or args.retries < 0:
        print("error: --samples, --max-turns and --concurrency must be at least 1, --retries at least 0")
        return 2
    # a bad dataset, a model that cannot be had, no daemon or server: the CLI prints the
    # message and exits with its kind's code (swe_aem/errors.py)
    try:
        preset, model_path = resolve_model(args.model)
    except KeyError as exc:  # an unknown preset name
        print(f"error: {exc.args[0]}")
        return 2
    instances = load_instances(args.dataset, split=args.split, instance_ids=args.instances,
                               dataset_format=args.dataset_format)
    args.out.mkdir(parents=True, exist_ok=True)
    traj_path = args.out / "trajectories.jsonl"
    traj_path.write_text("")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    config = agent_from_args(args, ROLLOUT_AGENT).for_model(preset)
    with open_harness(model_path, preset, concurrency=args.concurrency, server_url=args.server_url,
                      served_name=args.served_name) as h:
        result = h.rollout(
            instances, args.samples, tokenizer=tokenizer, config=config,
            grade=None if args.no_grade else grader(h.grade_pool, timeout=args.grade_timeout),
            max_retries=args.retries, concurrency=args.concurrency,
            on_episode=lambda ep: write_episodes(traj_path, [ep], append=True))
    episodes = result.episodes
    model_name = preset.hf_id if preset.source != "local" else str(model_path)
    for k in range(args.samples):
        name_k = "predictions.jsonl" if k == 0 else f"predictions.sample{k}.jsonl"
        write_predictions(args.out / name_k, [
            Prediction(ep.instance_id, model_name, ep.patch) for ep in episodes if ep.sample_index == k
        ])
    write_jsonl(args.out / "dropped.jsonl", (d.to_json() for d in result.dropped))
    graded = [ep.reward for ep in episodes if ep.reward is not None]
    summary = {
        "episodes": len(episodes),
        "dropped": len(result.dropped),
        "resolved": sum(r == 1.0 for r in graded),
        "resolve_rate": (sum(graded) / len(graded)) if graded else None,
        "terminations": {t: sum(ep.termination == t for ep in episodes) for t in
                         sorted({ep.termination for ep in episodes})},
        "trajectories": str(traj_path),
        "predictions": str(args.out / "predictions.jsonl"),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))
    return 0
