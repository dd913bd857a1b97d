"""`swe-aem eval`: roll out with evaluation settings, grade, and report resolve rates.

k runs are k samples per instance from one concurrent rollout (sample r is run
r). Each run gets its own official predictions file (one row per instance, as
the harness wants), and the per-instance outcomes go through the statistics in
swe_aem.eval.metrics: resolve rate per run, Pass@1 over runs with a confidence
interval, Pass@k with the unbiased estimator.
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import dataclass
from pathlib import Path

VERIFIED = "SWE-bench/SWE-bench_Verified"


@dataclass
class EvalSettings:
    runs: int = 1
    max_turns: int = 100  # the DeepSWE evaluation's step budget
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    max_context_tokens: int | None = None  # None: the model's
    episode_timeout_s: float = 5400.0
    grade_timeout_s: float = 1800.0
    concurrency: int = 8


def evaluate(model: str, dataset: str, out_dir: Path, s: EvalSettings, *, split: str = "test",
             instance_ids: list[str] | None = None, server_url: str | None = None) -> dict[str, Path]:
    """Roll out `s.runs` samples per instance, grade them (official rules), write the report."""
    from transformers import AutoTokenizer

    from swe_aem.agent.loop import AgentConfig
    from swe_aem.agent.rollout import rollout
    from swe_aem.agent.trajectory import write_episodes
    from swe_aem.data.instances import load_instances
    from swe_aem.eval.predictions import Prediction, write_predictions
    from swe_aem.eval.report import write_eval_result
    from swe_aem.eval.runs import runs_from_samples
    from swe_aem.policy.client import PolicyClient
    from swe_aem.policy.models import resolve_model
    from swe_aem.policy.server import ServerOptions, VLLMServer
    from swe_aem.sandbox import SandboxPool

    preset, model_path = resolve_model(model)
    instances = load_instances(dataset, split=split, instance_ids=instance_ids)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    agent = AgentConfig(
        max_turns=s.max_turns, max_context_tokens=min(s.max_context_tokens or preset.max_model_len,
                                                      preset.max_model_len),
        temperature=s.temperature, top_p=s.top_p, max_new_tokens=s.max_new_tokens,
        episode_timeout_s=s.episode_timeout_s, tool_call_format=preset.tool_call_format,
    )
    server = None
    if server_url is None:
        server = VLLMServer(model_path, ServerOptions.from_preset(preset, max_num_seqs=s.concurrency),
                            log_path=out_dir / "vllm.log").start()
    policy = PolicyClient(server_url or server.base_url, "policy" if server_url else server.model_name,
                          max_concurrency=s.concurrency)
    traj_path = out_dir / "trajectories.jsonl"
    traj_path.write_text("")
    try:
        with SandboxPool(max_concurrency=s.concurrency) as pool:
            episodes = asyncio.run(rollout(
                instances, s.runs, policy=policy, tokenizer=tokenizer, pool=pool, config=agent,
                grade=True, grade_kwargs={"strict": False, "timeout": s.grade_timeout_s},
                concurrency=s.concurrency,
                on_episode=lambda ep: write_episodes(traj_path, [ep], append=True)))
    finally:
        if server is not None:
            server.stop()
    name = str(model)
    for r in range(s.runs):
        write_predictions(out_dir / f"run-{r}" / "predictions.jsonl",
                          [Prediction(e.instance_id, name, e.patch or "")
                           for e in episodes if e.sample_index == r])
    runs = runs_from_samples(episodes, [i.instance_id for i in instances], s.runs)
    errors = [f"{e.instance_id}#{e.sample_index}: {e.error or e.grade_reason}" for e in episodes
              if e.termination == "error" or e.grade_status == "error"]
    meta = {"model": name, "dataset": dataset, "split": split, "runs": s.runs,
            "max_turns": s.max_turns, "temperature": s.temperature,
            "episodes_with_errors": len(errors), "errors": errors[:50],
            "note": "an episode whose container or grading failed counts as unresolved"}
    return write_eval_result(out_dir, runs, meta=meta, title=f"{name} on {dataset}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="preset, local model folder, or a run's final_model/")
    p.add_argument("--dataset", default=VERIFIED, help=f"default {VERIFIED}; 'local' for the local suite")
    p.add_argument("--split", default="test")
    p.add_argument("--runs", type=int, default=1, help="k: independent runs (Pass@1 is averaged over them)")
    p.add_argument("--max-turns", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--instances", nargs="*", default=None, help="only these instance ids")
    p.add_argument("--server-url", default=None, help="use a running server instead of starting one")
    p.add_argument("--out", type=Path, default=None, help="default runs/eval/<model>")


def run(args: argparse.Namespace) -> int:
    from swe_aem.data.instances import DatasetError
    from swe_aem.policy.models import ModelUnavailableError
    from swe_aem.sandbox import DockerUnavailableError

    if args.runs < 1:
        print("error: --runs must be at least 1")
        return 2
    out = args.out or Path("runs") / "eval" / Path(args.model).name
    settings = EvalSettings(runs=args.runs, max_turns=args.max_turns, temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens, concurrency=args.concurrency)
    try:
        paths = evaluate(args.model, args.dataset, out, settings, split=args.split,
                         instance_ids=args.instances, server_url=args.server_url)
    except (KeyError, ModelUnavailableError, DockerUnavailableError, DatasetError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}")
        return 1
    print(paths["markdown"].read_text())
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0
