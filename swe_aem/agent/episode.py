"""The episode loop: generate, parse one tool call, run it, show the observation, repeat.

Every way an episode can end is a termination reason on the record, never an
exception out of run_episode: the rollout keeps going and the trainer decides
what to do with truncated episodes. A sandbox that stops working is asked whose
doing that was (swe_aem.sandbox.classify_breakage): the agent's own damage ends the
episode as `sandbox_broken` (a 0 the trainer learns from), anything else as `error`
(an infrastructure failure the rollout retries).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from swe_aem.agent.chat import ChatTokens
from swe_aem.agent.settings import AgentConfig
from swe_aem.agent.toolcalls import ToolCallError, parse_tool_call, stop_strings
from swe_aem.agent.tools import ToolResult, ToolRunner
from swe_aem.agent.trajectory import Episode, Turn
from swe_aem.policy.client import PolicyClient, SamplingParams
from swe_aem.sandbox import Breakage, Sandbox, classify_breakage


def step_seed(seed: int, step: int) -> int:
    """The seed of a run's step `step` (or epoch): its rollouts' request seeds and its
    mini-batch draw derive from it, so a resume, the asynchronous look-ahead and another run
    with the same seed see the same numbers at the same step."""
    return seed * 1_000_003 + step


def request_seed(seed: int, instance_id: str, sample_index: int, turn: int) -> int:
    """The sampling seed of one request: a stable hash of (run seed, task, sample, turn),
    31 bits (vLLM takes any int; some servers take only int32). Common random numbers:
    every request of an episode differs, and the same request of another run is the same."""
    key = f"{seed}\x1f{instance_id}\x1f{sample_index}\x1f{turn}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 33


def truncate_observation(text: str, limit: int) -> tuple[str, bool]:
    """Keep the head and the tail, with a visible note of what was cut."""
    if len(text) <= limit:
        return text, False
    half = limit // 2
    cut = len(text) - 2 * half
    return f"{text[:half]}\n[... observation truncated: {cut} characters omitted ...]\n{text[-half:]}", True


def _observation(result: ToolResult | None, parse_error: str | None) -> str:
    if parse_error is not None:
        return f"ERROR: {parse_error}"
    return result.output if result.output.strip() else "(no output)"


async def in_thread(executor: Executor | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call (docker SDK) off the event loop, in `executor` (None: the default)."""
    return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)


async def run_episode(
    instance: Any,
    sandbox: Any,
    policy_client: PolicyClient,
    tokenizer: Any,
    config: AgentConfig,
    *,
    sample_index: int = 0,
    executor: Executor | None = None,
) -> Episode:
    """Run one agent episode on an instance inside a started sandbox."""
    start = time.monotonic()
    deadline = start + config.episode_timeout_s
    if config.tool_call_format is None:
        raise ValueError("AgentConfig.tool_call_format is unset: resolve the settings for the model "
                         "(AgentConfig.for_model) or name the format")
    chat = ChatTokens(tokenizer, config.tool_call_format, thinking=bool(config.thinking))
    tools = ToolRunner(sandbox, default_timeout_s=config.tool_timeout_s)
    episode = Episode(instance.instance_id, sample_index, model=policy_client.model)
    pending = chat.initial_ids(instance)  # ids added since the last response
    context = list(pending)
    episode.termination = "max_turns"
    malformed = 0  # consecutive turns whose tool call could not be parsed
    try:
        for turn_no in range(config.max_turns):
            limit = config.max_context_tokens  # None: unresolved, the server's window applies
            room = config.max_new_tokens if limit is None else limit - len(context)
            if room <= 0:
                episode.termination = "context_overflow"
                break
            if time.monotonic() >= deadline:
                episode.termination = "timeout"
                break
            sampling = SamplingParams(
                temperature=config.temperature,
                top_p=config.top_p,
                max_tokens=min(config.max_new_tokens, room),
                stop=stop_strings(config.tool_call_format, bool(config.thinking)),
                seed=None if config.seed is None else request_seed(
                    config.seed, instance.instance_id, sample_index, turn_no),
            )
            t0 = time.monotonic()
            gen = await asyncio.wait_for(
                policy_client.generate(context, sampling), deadline - time.monotonic()
            )
            generate_s = time.monotonic() - t0
            text = chat.decode(gen.token_ids)
            call, parse_error, result = None, None, None
            try:
                call = parse_tool_call(text, config.tool_call_format, thinking=bool(config.thinking))
            except ToolCallError as exc:
                parse_error = str(exc)
            t1 = time.monotonic()
            broken: Breakage | None = None
            if call is not None:
                try:
                    result = await asyncio.wait_for(
                        in_thread(executor, tools.run, call, deadline - time.monotonic()),
                        deadline - time.monotonic(),
                    )
                except TimeoutError:
                    raise
                except Exception as exc:  # the sandbox failed under the call: whose doing?
                    broken = await _own_damage(sandbox, executor)
                    if broken is None:
                        raise
                    result = ToolResult(output=f"{type(exc).__name__}: {exc}\n[the sandbox is unusable: "
                                               f"{broken.reason}; the episode ends]", error=True)
            observation, truncated = truncate_observation(
                _observation(result, parse_error), config.max_observation_chars
            )
            episode.turns.append(Turn(
                prompt_ids=pending,
                response_ids=list(gen.token_ids),
                logprobs=list(gen.logprobs),
                finish_reason=gen.finish_reason,
                seed=sampling.seed,
                policy_version=gen.policy_version,
                response_text=text,
                thinking_tokens=chat.thinking_tokens(list(gen.token_ids)),
                tool_call=call,
                tool_error=parse_error if parse_error is not None else (
                    observation if result is not None and result.error else None),
                observation=observation,
                observation_truncated=truncated,
                generate_s=generate_s,
                tool_s=time.monotonic() - t1,
            ))
            if broken is not None:  # the damaging call's turn is kept: it is what the 0 is for
                episode.termination = "sandbox_broken"
                episode.error = f"the agent's own command broke its sandbox: {broken.reason}"
                break
            if result is not None and result.finished:
                episode.termination = "finished"
                break
            malformed = malformed + 1 if parse_error is not None else 0
            if malformed >= config.max_malformed_calls:
                episode.termination = "malformed_calls"
                break
            pending = chat.observation_ids(gen.token_ids, observation)
            context += list(gen.token_ids) + pending
    except TimeoutError:
        episode.termination = "timeout"
    except Exception as exc:  # noqa: BLE001 (server gone, container dead, ...: recorded, rollout goes on)
        episode.termination = "error"
        episode.error = f"{type(exc).__name__}: {exc}"
    episode.patch = await _final_patch(sandbox, episode, executor)
    episode.wall_s = time.monotonic() - start
    return episode


async def _own_damage(sandbox: Any, executor: Executor | None) -> Breakage | None:
    """The sandbox's breakage when it is the agent's own damage, else None (infrastructure, or
    not broken at all; a stand-in that is no real Sandbox is never judged broken)."""
    if not isinstance(sandbox, Sandbox):
        return None
    breakage = await in_thread(executor, classify_breakage, sandbox)
    return breakage if breakage.own else None


async def _final_patch(sandbox: Any, episode: Episode, executor: Executor | None) -> str:
    """The sandbox's git diff against base_commit; a failure is recorded, not raised.

    A broken sandbox gives no patch (it is not asked: its container is gone or cannot run
    git). A diff that fails because the agent broke the sandbox at the end (deleted the
    repository, /bin, then finished) turns the episode into `sandbox_broken`; any other
    failure is an `error`."""
    if episode.termination == "sandbox_broken":
        return ""
    try:
        return await in_thread(executor, sandbox.diff)
    except Exception as exc:  # noqa: BLE001 (a dead container must not lose the episode record)
        note = f"patch unavailable: {type(exc).__name__}: {exc}"
        broken = await _own_damage(sandbox, executor) if episode.termination != "error" else None
        if broken is not None:
            episode.termination = "sandbox_broken"
            note = f"the agent's own commands broke its sandbox: {broken.reason}; {note}"
        else:
            episode.termination = "error"
        episode.error = f"{episode.error}; {note}" if episode.error else note
        return ""
