"""Thinking models (Qwen3): the rollout.agent.thinking switch, tool calls read after </think> only, no
stop string inside the thinking, the per-turn thinking span and its metrics.

The template tests use a copy of the tiny model's real tokenizer given Qwen3's four added
tokens and a Qwen3-style chat template (tests/fixtures/qwen3_style_chat_template.jinja, written
from Qwen3's documented behaviour: the real tokenizers are on the unreachable hub). The
episodes run on real containers of the local suite behind ScriptedPolicyServer, the stand-in
for vLLM at the HTTP boundary (with vLLM's stop-string cut).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from swe_aem.agent.chat import ChatTokens
from swe_aem.agent.episode import run_episode
from swe_aem.agent.settings import AgentConfig
from swe_aem.agent.toolcalls import (
    STOP_STRINGS,
    ToolCallError,
    after_thinking,
    parse_tool_call,
    stop_strings,
    tool_schemas,
)
from swe_aem.agent.trajectory import Episode, ToolCall, Turn, read_episodes, write_episodes
from swe_aem.config import RolloutConfig, load_config
from swe_aem.policy.client import PolicyClient
from swe_aem.policy.models import load_preset, preset_names
from swe_aem.policy.scripted import (
    ScriptedPolicyServer,
    editor_calls_for_patch,
    script,
    tool_call_text,
)
from swe_aem.train.metrics import thinking_metrics

QWEN3_TEMPLATE = Path(__file__).parents[1] / "fixtures" / "qwen3_style_chat_template.jinja"
DECOY = tool_call_text("qwen", "finish", message="decoy from the thinking")
INSTANCE = SimpleNamespace(repo="acme/calc", base_commit="abc123", problem_statement="add() is wrong")


def thinking_response(reasoning: str, answer: str) -> str:
    """A response in Qwen3's canonical thinking form."""
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


# ---------------------------------------------------------------- pure parts


def test_call_is_read_after_the_thinking_only() -> None:
    real = tool_call_text("qwen", "execute_bash", command="ls")
    text = thinking_response(f"I could just stop: {DECOY}. No, look first.", real)
    assert parse_tool_call(text, "qwen", thinking=True) == ToolCall("execute_bash", {"command": "ls"})
    # the same text read without the thinking rule: two calls, the decoy among them
    with pytest.raises(ToolCallError, match="found 2 tool calls"):
        parse_tool_call(text, "qwen")
    xml = "<think>\n<function=finish>\n</function>\n</think>\n\n<function=execute_bash>\n" \
          "<parameter=command>pwd</parameter>\n</function>"
    assert parse_tool_call(xml, "xml", thinking=True) == ToolCall("execute_bash", {"command": "pwd"})


def test_only_the_text_after_the_last_think_end_is_the_answer() -> None:
    assert after_thinking("<think>\na\n</think>\nb </think>\n\nanswer") == "\n\nanswer"
    assert after_thinking("a prompt-opened thought\n</think>\n\nx") == "\n\nx"  # <think> in the prompt
    with pytest.raises(ToolCallError, match="found no tool call|no tool call found"):
        parse_tool_call(thinking_response(DECOY, "no call here"), "qwen", thinking=True)


def test_unclosed_thinking_has_no_call_and_says_so() -> None:
    for text in (f"<think>\nlet me {DECOY} think more", "", "<think>"):
        with pytest.raises(ToolCallError, match=r"thinking never closed: no </think> found"):
            parse_tool_call(text, "qwen", thinking=True)


def test_no_stop_string_with_thinking_on() -> None:
    assert stop_strings("qwen", thinking=True) == () and stop_strings("xml", thinking=True) == ()
    assert stop_strings("qwen", thinking=False) == STOP_STRINGS["qwen"] == ("</tool_call>",)
    assert stop_strings("xml", thinking=False) == ("</function>",)
    with pytest.raises(ValueError, match="unknown tool call format 'json'"):
        stop_strings("json", thinking=True)


def _turn(prompt: int, response: int, thinking: int) -> Turn:
    return Turn(prompt_ids=[1] * prompt, response_ids=[2] * response, logprobs=[-0.1] * response,
                finish_reason="stop", thinking_tokens=thinking)


def test_thinking_metrics_count_turns_responses_and_context() -> None:
    a = Episode("a", 0, turns=[_turn(10, 8, 6), _turn(5, 4, 0)])
    b = Episode("b", 0, turns=[_turn(20, 12, 12)])
    m = thinking_metrics([a, b])
    assert m == {"thinking_tokens_mean": 6.0, "thinking_tokens_max": 12.0,
                 "thinking_share_response": 18 / 24, "thinking_share_context": 18 / 59}
    off = thinking_metrics([Episode("c", 0, turns=[_turn(3, 2, 0)])])
    assert off["thinking_tokens_max"] == 0.0 and off["thinking_share_context"] == 0.0
    assert thinking_metrics([]) == {k: 0.0 for k in m}


def test_thinking_tokens_stay_sampled_in_flatten_and_round_trip(tmp_path) -> None:
    """Thinking tokens are response tokens: loss mask 1, their log-probs, their turn index."""
    ep = Episode("a", 0, turns=[_turn(3, 5, 4)])
    flat = ep.flatten()
    assert flat.loss_mask == [0] * 3 + [1] * 5 and flat.turn_index == [-1] * 3 + [0] * 5
    write_episodes(tmp_path / "t.jsonl", [ep])
    (back,) = read_episodes(tmp_path / "t.jsonl")
    assert back.turns[0].thinking_tokens == 4
    with pytest.raises(ValueError, match="6 thinking tokens, outside its 5 response tokens"):
        _turn(0, 5, 6)


def test_schema_1_turns_read_as_not_thinking(tmp_path) -> None:
    v1 = {"instance_id": "a__b-1", "sample_index": 0, "schema_version": 1,
          "turns": [{"prompt_ids": [1], "response_ids": [3, 4], "logprobs": [-0.5, -0.5],
                     "finish_reason": "stop"}]}
    (tmp_path / "v1.jsonl").write_text(json.dumps(v1) + "\n")
    (ep,) = read_episodes(tmp_path / "v1.jsonl")
    assert ep.turns[0].thinking_tokens == 0


# ---------------------------------------------------------------- the switch


def test_presets_state_their_thinking_default() -> None:
    """Qwen3 thinks as it ships; no other preset is a thinking model. Each YAML says so."""
    assert load_preset("qwen3-32b").thinking is True
    assert {n for n in preset_names() if load_preset(n).thinking} == {"qwen3-32b", "qwen3-32b-lora"}
    for name in preset_names():
        text = (Path(__file__).parents[2] / "configs" / "model" / f"{name}.yaml").read_text()
        assert "\nthinking: " in text, name
    with pytest.raises(ValueError, match="thinking must be true or false"):
        load_preset("tiny", thinking="yes")


def test_a_folder_whose_template_has_the_switch_thinks(tmp_path) -> None:
    """`--model FOLDER` (a local Qwen3 copy): thinking on when its chat template has Qwen3's
    enable_thinking switch, else the base preset's (tiny: off)."""
    from swe_aem.policy.models import preset_for_folder

    for name, template, thinks in (("qwen3", QWEN3_TEMPLATE.read_text(), True),
                                   ("plain", "{{ messages[0].content }}", False)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 4096}))
        (folder / "chat_template.jinja").write_text(template)
        assert preset_for_folder(folder).thinking is thinks, name


def test_rollout_thinking_reaches_the_agent_config() -> None:
    """rollout.agent.thinking null: the preset's; set: it wins. The train.yaml default is null."""
    qwen3, tiny = load_preset("qwen3-32b"), load_preset("tiny")
    assert load_config().rollout.agent.thinking is None
    assert RolloutConfig().agent.for_model(qwen3).thinking is True
    assert RolloutConfig().agent.for_model(tiny).thinking is False
    assert RolloutConfig().agent.for_model(qwen3, thinking=False).thinking is False
    assert RolloutConfig().agent.for_model(tiny, thinking=True).thinking is True
    assert load_config(overrides=["rollout.agent.thinking=false"]).rollout.agent.thinking is False
    assert AgentConfig(thinking=None).for_model(qwen3).thinking is True


def test_eval_and_rollout_take_a_thinking_flag() -> None:
    from swe_aem.commands import eval as eval_cmd
    from swe_aem.commands import rollout as rollout_cmd

    for add in (eval_cmd.add_arguments, rollout_cmd.add_arguments):
        parser = argparse.ArgumentParser()
        add(parser)
        base = ["--model", "tiny", "--out", "x"]
        assert parser.parse_args(base).thinking is None
        assert parser.parse_args(base + ["--thinking"]).thinking is True
        assert parser.parse_args(base + ["--no-thinking"]).thinking is False
    args = argparse.ArgumentParser()
    rollout_cmd.add_arguments(args)
    parsed = args.parse_args(["--model", "qwen3-32b", "--out", "x", "--no-thinking"])
    from swe_aem.commands.agent_options import agent_from_args

    assert agent_from_args(parsed, rollout_cmd.ROLLOUT_AGENT).for_model(load_preset("qwen3-32b")).thinking is False


# ---------------------------------------------------------------- the chat template


@pytest.fixture(scope="module")
def qwen3_tokenizer(tokenizer):  # tests/conftest.py: the tiny preset's real tokenizer
    """tiny's tokenizer with Qwen3's added tokens and a Qwen3-style thinking template."""
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens(["<think>", "</think>", "<tool_call>", "</tool_call>"])
    tok.chat_template = QWEN3_TEMPLATE.read_text()
    return tok


def _call_message(reasoning: str, name: str, args: dict) -> dict:
    return {"role": "assistant", "content": "", "reasoning_content": reasoning,
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": args}}]}


def test_incremental_thinking_turns_equal_the_templates_rendering(qwen3_tokenizer) -> None:
    """Each turn's sampled thinking stays in later prompts, as the template keeps the
    reasoning of every turn after the last user query (tool responses are no query): the ids
    built turn by turn equal the tokenised full rendering, byte for byte."""
    tok = qwen3_tokenizer
    chat = ChatTokens(tok, "qwen", thinking=True)
    ids = chat.initial_ids(INSTANCE)
    messages = chat.initial_messages(INSTANCE)
    turns = [("List the files first.", "execute_bash", {"command": "ls"}, "a.py"),
             (f"a.py it is. Not {DECOY} yet.", "str_replace_editor",
              {"command": "view", "path": "/testbed/a.py"}, "1\tdef add(a, b):"),
             ("Fixed, I think.", "finish", {"message": "done"}, "")]
    for reasoning, name, args, obs in turns:
        response = tok.encode(thinking_response(reasoning, tool_call_text("qwen", name, **args)),
                              add_special_tokens=False) + [tok.eos_token_id]
        ids += response + chat.observation_ids(response, obs)
        messages += [_call_message(reasoning, name, args), {"role": "tool", "content": obs}]
    full = tok.apply_chat_template(messages, tools=tool_schemas(), tokenize=False,
                                   add_generation_prompt=True, enable_thinking=True)
    assert tok.decode(ids) == full
    assert ids == tok.encode(full, add_special_tokens=False)
    assert all(f"<think>\n{r}\n</think>\n\n<tool_call>" in full for r, *_ in turns)
    # the template drops reasoning before a later user query: the rule the agent relies on
    asked_again = messages + [{"role": "user", "content": "And now?"}]
    again = tok.apply_chat_template(asked_again, tools=tool_schemas(), tokenize=False)
    assert "List the files first." not in again and "<think>" not in again


def test_thinking_off_renders_the_empty_think_block(qwen3_tokenizer) -> None:
    """enable_thinking=False reaches the template: every generation prompt (the first and
    each after an observation) carries Qwen3's empty <think></think>; on, none does."""
    tok = qwen3_tokenizer
    off, on = ChatTokens(tok, "qwen", thinking=False), ChatTokens(tok, "qwen", thinking=True)
    empty = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    response = tok.encode(tool_call_text("qwen", "execute_bash", command="ls"),
                          add_special_tokens=False) + [tok.eos_token_id]
    assert tok.decode(off.initial_ids(INSTANCE)).endswith(empty)
    assert tok.decode(off.observation_ids(response, "a.py")).endswith(empty)
    assert tok.decode(on.initial_ids(INSTANCE)).endswith("<|im_start|>assistant\n")
    assert "<think>" not in tok.decode(on.observation_ids(response, "a.py"))


def test_thinking_span_in_tokens(qwen3_tokenizer, tokenizer) -> None:
    """The span runs through the last </think>: on the ids where </think> is one token, on
    the text of the shortest prefix where it is not; all but the EOS when never closed."""
    text = thinking_response(f"maybe {DECOY}", tool_call_text("qwen", "execute_bash", command="ls"))
    for tok in (qwen3_tokenizer, tokenizer):
        chat = ChatTokens(tok, "qwen", thinking=True)
        ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        n = chat.thinking_tokens(ids)
        assert tok.decode(ids[:n]).endswith("</think>") and "</think>" not in tok.decode(ids[:n - 1])
        unclosed = tok.encode("<think>\nstill going", add_special_tokens=False)
        assert chat.thinking_tokens(unclosed + [tok.eos_token_id]) == len(unclosed)
        assert chat.thinking_tokens(unclosed) == len(unclosed)
        assert ChatTokens(tok, "qwen", thinking=False).thinking_tokens(ids) == 0
    assert qwen3_tokenizer.convert_tokens_to_ids("</think>") in qwen3_tokenizer.encode(text)


def test_scripted_server_cuts_at_stop_strings_as_vllm(qwen3_tokenizer) -> None:
    """The stand-in's honour_stop: the response ends with the token completing the first stop
    string, with no EOS, as vLLM's; without stop strings the whole text and its EOS."""
    tok = qwen3_tokenizer
    text = thinking_response(f"maybe {DECOY}", tool_call_text("qwen", "execute_bash", command="ls"))
    prompt = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    with ScriptedPolicyServer(tok, script([text]), honour_stop=True) as server:
        cut = server.completion({"prompt": prompt, "stop": ["</tool_call>"]})["choices"][0]
        whole = server.completion({"prompt": prompt})["choices"][0]
    assert cut["text"] == text[:text.index("</tool_call>") + len("</tool_call>")]
    assert cut["finish_reason"] == "stop" and cut["token_ids"][-1] != tok.eos_token_id
    assert whole["token_ids"] == tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]


# ---------------------------------------------------------------- episodes on real containers


def _play(tok, pool, instance, responses: list[str], thinking: bool):
    config = AgentConfig(max_turns=6, temperature=0.0, tool_call_format="qwen", thinking=thinking)
    with ScriptedPolicyServer(tok, script(responses), honour_stop=True) as server, \
            pool.sandbox(instance) as sb:
        client = PolicyClient(server.base_url, "scripted", retries=1, backoff_s=0.05, timeout=30)
        episode = asyncio.run(run_episode(instance, sb, client, tok, config))
    return episode, server


@pytest.mark.slow
@pytest.mark.docker
def test_thinking_episode_reads_calls_after_the_thinking(qwen3_tokenizer, sandbox_pool,
                                                         local_instances) -> None:
    """Every response thinks and drafts a finish call inside its thinking. Thinking on: no
    stop string is sent, so no turn is cut inside the thinking; the call after </think> runs
    (the gold edits, then finish), the decoys never do; the span is recorded and trained.
    Thinking off, the same responses: `</tool_call>` cuts turn 0 inside its thinking and the
    decoy finishes the episode, which is why the rule exists; enable_thinking=False is rendered."""
    from swe_aem.reward import grade_patch

    tok = qwen3_tokenizer
    inst = next(i for i in local_instances if i.instance_id == "swe-aem__pyledger-3")
    calls = editor_calls_for_patch(inst.patch, fmt="qwen") + [tool_call_text("qwen", "finish", message="ok")]
    responses = [thinking_response(f"Step {k}. I could give up: {DECOY}. No.", call)
                 for k, call in enumerate(calls)]
    episode, server = _play(tok, sandbox_pool, inst, responses, thinking=True)
    assert episode.termination == "finished", [t.observation for t in episode.turns]
    assert all("stop" not in body for body in server.requests)
    assert [t.tool_call for t in episode.turns] == [parse_tool_call(c, "qwen") for c in calls]
    assert all(t.tool_error is None for t in episode.turns)
    for turn, text in zip(episode.turns, responses):
        assert turn.response_ids == tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
        span = tok.decode(turn.response_ids[:turn.thinking_tokens])
        assert span == text[:text.rindex("</think>") + len("</think>")]
    flat = episode.flatten()
    assert sum(flat.loss_mask) == sum(len(t.response_ids) for t in episode.turns)
    assert thinking_metrics([episode])["thinking_tokens_mean"] == pytest.approx(
        sum(t.thinking_tokens for t in episode.turns) / len(episode.turns))
    assert grade_patch(inst, episode.patch).reward == 1.0

    off, off_server = _play(tok, sandbox_pool, inst, responses, thinking=False)
    assert off_server.requests[0]["stop"] == ["</tool_call>"]
    assert tok.decode(off_server.requests[0]["prompt"]).endswith("<think>\n\n</think>\n\n")
    first = off.turns[0]
    assert first.response_text.endswith(DECOY) and "</think>" not in first.response_text
    assert off.termination == "finished" and first.tool_call.arguments["message"] == "decoy from the thinking"
    assert first.thinking_tokens == 0 and off.patch == ""
