"""The agent's settings as command-line options, one flag per AgentConfig field that a user
sets by hand, shared by `swe-aem rollout` and `swe-aem eval` (each with its own defaults)."""

from __future__ import annotations

import argparse

from swe_aem.agent.settings import AgentConfig


def add_agent_arguments(parser: argparse.ArgumentParser, defaults: AgentConfig, *, concurrency: int,
                        sample: str) -> None:
    """--max-turns ... --thinking with `defaults`' values, and --concurrency (`sample`: what the
    third part of a request's seed counts, a sample or a run)."""
    d = defaults
    parser.add_argument("--max-turns", type=int, default=d.max_turns, help=f"default {d.max_turns}")
    parser.add_argument("--max-context", type=int, default=d.max_context_tokens,
                        help="tokens of prompt + response; default: the model's window")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens, help="per turn")
    parser.add_argument("--temperature", type=float, default=d.temperature)
    parser.add_argument("--top-p", type=float, default=d.top_p)
    parser.add_argument("--episode-timeout", type=float, default=d.episode_timeout_s, help="seconds")
    parser.add_argument("--concurrency", type=int, default=concurrency)
    parser.add_argument("--seed", type=int, default=0 if d.seed is None else d.seed,
                        help=f"sampling seed: each request is seeded from (seed, task, {sample}, turn)")
    parser.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=d.thinking,
                        help=("thinking models: the chat template's enable_thinking (--no-thinking: "
                              "off); default: the preset's (qwen3-32b on, others off)"))


def agent_from_args(args: argparse.Namespace, defaults: AgentConfig) -> AgentConfig:
    """`defaults` with what the flags set (not yet resolved for a model: AgentConfig.for_model)."""
    import dataclasses

    return dataclasses.replace(
        defaults, max_turns=args.max_turns, max_context_tokens=args.max_context,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        episode_timeout_s=args.episode_timeout, seed=args.seed, thinking=args.thinking)
