"""Rollouts: every instance G times, concurrently over the sandbox pool and the server.

`rollout(...)` is the library entry the trainer and eval call with their own client,
pool and tokenizer; `swe-aem rollout` wraps it with a server and files:
DIR/trajectories.jsonl (one episode a line, written as each finishes) and
DIR/predictions.jsonl (official SWE-bench format; sample 0, plus
predictions.sampleK.jsonl for K >= 1 because the harness wants one row per instance).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from swe_aem.agent.loop import AgentConfig, in_thread, run_episode
from swe_aem.agent.trajectory import Episode, write_episodes
from swe_aem.policy.client import PolicyClient


async def rollout(
    instances: Sequence[Any],
    samples: int,
    *,
    policy: PolicyClient,
    tokenizer: Any,
    pool: Any,
    config: AgentConfig,
    grade: bool = True,
    grade_kwargs: dict[str, Any] | None = None,
    concurrency: int = 4,
    progress: bool = True,
    on_episode: Callable[[Episode], None] | None = None,
) -> list[Episode]:
    """Run `samples` episodes per instance; return them ordered by (instance, sample).

    Sandbox and grading calls are blocking (docker SDK) and run in a thread pool sized
    to the concurrency. A sandbox that cannot start or a grader that fails becomes an
    episode with termination "error" / grade_status "error", never a lost sample.
    """
    executor = ThreadPoolExecutor(max_workers=2 * concurrency + 2, thread_name_prefix="rollout")
    semaphore = asyncio.Semaphore(concurrency)
    jobs = [(inst, k) for inst in instances for k in range(samples)]
    bar = tqdm(total=len(jobs), desc="rollout", unit="ep", disable=not progress)
    resolved = 0

    async def one(instance: Any, k: int) -> Episode:
        nonlocal resolved
        async with semaphore:
            episode = await _episode_in_sandbox(instance, k, policy, tokenizer, pool, config, executor)
        if grade:
            await _grade(instance, episode, grade_kwargs or {}, executor)
            resolved += int(episode.reward == 1.0)
        if on_episode is not None:
            on_episode(episode)
        bar.update(1)
        bar.set_postfix(resolved=resolved, last=episode.termination)
        return episode

    try:
        return list(await asyncio.gather(*(one(inst, k) for inst, k in jobs)))
    finally:
        bar.close()
        executor.shutdown(wait=False)


async def _episode_in_sandbox(
    instance: Any, k: int, policy: PolicyClient, tokenizer: Any, pool: Any, config: AgentConfig,
    executor: Executor,
) -> Episode:
    start = time.monotonic()
    manager = pool.sandbox(instance)
    try:
        sandbox = await in_thread(executor, manager.__enter__)
    except Exception as exc:  # noqa: BLE001 (any start failure is recorded on the episode)
        return Episode(instance.instance_id, k, termination="error", model=policy.model,
                       error=f"sandbox did not start: {type(exc).__name__}: {exc}",
                       wall_s=time.monotonic() - start)
    try:
        return await run_episode(instance, sandbox, policy, tokenizer, config, sample_index=k,
                                 executor=executor)
    finally:
        await in_thread(executor, manager.__exit__, None, None, None)


async def _grade(instance: Any, episode: Episode, grade_kwargs: dict[str, Any], executor: Executor) -> None:
    from swe_aem.reward import grade_patch

    try:
        result = await in_thread(executor, partial(grade_patch, instance, episode.patch, **grade_kwargs))
    except Exception as exc:  # noqa: BLE001 (a grader failure is recorded, reward 0)
        episode.reward, episode.grade_status = 0.0, "error"
        episode.grade_reason = f"{type(exc).__name__}: {exc}"
        return
    episode.reward = float(result.reward)
    episode.grade_status = str(result.status)
    episode.grade_reason = str(result.reason)


# --- `swe-aem rollout` -----------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="local", help="'local', a .jsonl/.json/.parquet path or a hub name")
    parser.add_argument("--split", default="test")
    parser.add_argument("--instances", nargs="*", default=None, help="only these instance ids")
    parser.add_argument("--model", default="tiny", help="preset name or a local model folder")
    parser.add_argument("--server-url", default=None,
                        help="use a running server instead of starting one (its served model name: --served-name)")
    parser.add_argument("--served-name", default="policy")
    parser.add_argument("--samples", "-G", type=int, default=1)
    parser.add_argument("--max-turns", type=int, default=30)
    parser.add_argument("--max-context", type=int, default=None, help="tokens; default: the preset's")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--episode-timeout", type=float, default=1800.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-grade", action="store_true", help="skip grading (reward stays null)")
    parser.add_argument("--out", required=True, type=Path)


def run(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from swe_aem.data.instances import load_instances
    from swe_aem.eval.predictions import Prediction, write_predictions
    from swe_aem.policy.models import ModelUnavailableError, resolve_model
    from swe_aem.policy.server import ServerOptions, VLLMServer
    from swe_aem.sandbox import SandboxPool

    if args.samples < 1 or args.max_turns < 1 or args.concurrency < 1:
        print("error: --samples, --max-turns and --concurrency must be at least 1")
        return 2
    try:
        preset, model_path = resolve_model(args.model)
    except (KeyError, ModelUnavailableError) as exc:
        print(f"error: {exc.args[0]}")
        return 1
    instances = load_instances(args.dataset, split=args.split, instance_ids=args.instances)
    args.out.mkdir(parents=True, exist_ok=True)
    traj_path = args.out / "trajectories.jsonl"
    traj_path.write_text("")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    max_context = min(args.max_context or preset.max_model_len, preset.max_model_len)
    config = AgentConfig(
        max_turns=args.max_turns, max_context_tokens=max_context,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        episode_timeout_s=args.episode_timeout, tool_call_format=preset.tool_call_format,
    )

    def save(episode: Episode) -> None:  # as each finishes: a crash loses nothing done
        write_episodes(traj_path, [episode], append=True)

    server = None
    if args.server_url is None:
        server = VLLMServer(model_path, ServerOptions.from_preset(preset, max_num_seqs=args.concurrency))
        print(f"starting vLLM for {model_path} (log {server.log_path}) ...", flush=True)
        server.start()
    url = args.server_url or server.base_url
    name = args.served_name if args.server_url else server.model_name
    policy = PolicyClient(url, name, max_concurrency=args.concurrency)
    try:
        with SandboxPool(max_concurrency=args.concurrency) as pool:
            episodes = asyncio.run(rollout(
                instances, args.samples, policy=policy, tokenizer=tokenizer, pool=pool,
                config=config, grade=not args.no_grade, concurrency=args.concurrency, on_episode=save,
            ))
    finally:
        if server is not None:
            server.stop()
    model_name = preset.hf_id if preset.source != "local" else str(model_path)
    for k in range(args.samples):
        name_k = "predictions.jsonl" if k == 0 else f"predictions.sample{k}.jsonl"
        write_predictions(args.out / name_k, [
            Prediction(ep.instance_id, model_name, ep.patch) for ep in episodes if ep.sample_index == k
        ])
    graded = [ep.reward for ep in episodes if ep.reward is not None]
    summary = {
        "episodes": len(episodes),
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
