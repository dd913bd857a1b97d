"""Fast tests of the scaffold's pure parts: tool-call parsing, observation truncation,
trajectory flattening / JSONL, and incremental chat tokens with the tiny model's tokenizer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swe_aem.agent.chat import ChatTokens
from swe_aem.agent.episode import request_seed, truncate_observation
from swe_aem.agent.toolcalls import ToolCallError, parse_tool_call, tool_schemas, xml_tool_list
from swe_aem.agent.trajectory import Episode, ToolCall, Turn, read_episodes, write_episodes
from swe_aem.policy.models import load_preset
from swe_aem.policy.scripted import tool_call_text

# ---------------------------------------------------------------- tool-call parsing


def test_xml_call_parsed_verbatim_with_int_coercion() -> None:
    text = (
        "Let me look.\n<function=execute_bash>\n<parameter=command>\ngrep -n 'a < b' x.py\n"
        "</parameter>\n<parameter=timeout>30</parameter>\n</function>"
    )
    call = parse_tool_call(text, "xml")
    assert call == ToolCall("execute_bash", {"command": "grep -n 'a < b' x.py", "timeout": 30})


def test_xml_multiline_editor_call_keeps_inner_newlines() -> None:
    text = (
        "<function=str_replace_editor>\n<parameter=command>str_replace</parameter>\n"
        "<parameter=path>/testbed/a.py</parameter>\n<parameter=old_str>def f():\n    return 1\n"
        "</parameter>\n<parameter=new_str>def f():\n    return 2\n\n</parameter>\n</function>"
    )
    call = parse_tool_call(text, "xml")
    assert call.arguments["old_str"] == "def f():\n    return 1"
    assert call.arguments["new_str"] == "def f():\n    return 2\n"


def test_qwen_native_call() -> None:
    text = '<tool_call>\n{"name": "str_replace_editor", "arguments": {"command": "view", "path": "/testbed", "view_range": [1, 5]}}\n</tool_call>'
    call = parse_tool_call(text, "qwen")
    assert call.name == "str_replace_editor"
    assert call.arguments == {"command": "view", "path": "/testbed", "view_range": [1, 5]}
    # some models double-encode arguments
    text2 = '<tool_call>{"name": "finish", "arguments": "{\\"message\\": \\"done\\"}"}</tool_call>'
    assert parse_tool_call(text2, "qwen").arguments == {"message": "done"}


@pytest.mark.parametrize(
    ("text", "fmt", "needle"),
    [
        ("I will just think.", "xml", "no tool call found"),
        ("<function=execute_bash><parameter=command>ls</parameter>", "xml", "must end with </function>"),
        ("<function=rm_rf></function>", "xml", "unknown tool 'rm_rf'"),
        ("<function=execute_bash></function>", "xml", "missing required parameter(s) ['command']"),
        ("<function=execute_bash><parameter=cmd>ls</parameter></function>", "xml", "unknown parameter"),
        ("<function=execute_bash><parameter=command>ls</parameter><parameter=timeout>soon</parameter></function>",
         "xml", "must be of type integer"),
        ("<function=str_replace_editor><parameter=command>delete</parameter><parameter=path>/testbed/a</parameter></function>",
         "xml", "must be one of"),
        ("<function=finish></function><function=finish></function>", "xml", "exactly one"),
        ("<tool_call>{not json}</tool_call>", "qwen", "not valid JSON"),
        ('<tool_call>["finish"]</tool_call>', "qwen", 'string "name"'),
        ('<tool_call>{"name": "finish", "arguments": [1]}</tool_call>', "qwen", "must be a JSON object"),
        ("plain text", "qwen", "no tool call found"),
    ],
)
def test_malformed_calls_raise_tool_call_error(text: str, fmt: str, needle: str) -> None:
    with pytest.raises(ToolCallError) as err:
        parse_tool_call(text, fmt)
    assert needle in str(err.value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(list("<>=/{}\"\n ab:1") + [
    "<function=", "</function>", "<parameter=command>", "<parameter=timeout>", "</parameter>",
    "<tool_call>", "</tool_call>", '{"name": "finish"', "finish", "execute_bash"])),
    st.sampled_from(["xml", "qwen"]))
def test_parser_never_crashes_on_arbitrary_text(pieces: list[str], fmt: str) -> None:
    text = "".join(pieces)
    try:
        call = parse_tool_call(text, fmt)
    except ToolCallError:
        return
    assert call.name in {t["function"]["name"] for t in tool_schemas()}


def test_schema_files_describe_all_tools() -> None:
    names = [t["function"]["name"] for t in tool_schemas()]
    assert names == ["execute_bash", "str_replace_editor", "finish"]
    listing = xml_tool_list()
    for name in names:
        assert f"## {name}" in listing
    assert "undo_edit" in listing


# ---------------------------------------------------------------- observations


def test_truncation_keeps_head_and_tail_with_note() -> None:
    text = "H" * 600 + "M" * 5000 + "T" * 600
    out, cut = truncate_observation(text, 1000)
    assert cut
    assert out.startswith("H" * 500) and out.endswith("T" * 500)
    assert "observation truncated: 5200 characters omitted" in out
    assert truncate_observation("short", 1000) == ("short", False)


# ---------------------------------------------------------------- trajectories


def _episode() -> Episode:
    return Episode(
        instance_id="x__y-1",
        sample_index=2,
        turns=[
            Turn(prompt_ids=[1, 2, 3], response_ids=[10, 11], logprobs=[-0.5, -0.25], finish_reason="stop",
                 tool_call=ToolCall("execute_bash", {"command": "ls"}), observation="a.py"),
            Turn(prompt_ids=[4, 5], response_ids=[12], logprobs=[-1.0], finish_reason="stop",
                 tool_call=ToolCall("finish", {})),
        ],
        termination="finished",
        patch="diff --git a/a b/a\n",
        reward=1.0,
    )


def test_request_seeds_are_stable_and_differ_per_task_sample_and_turn() -> None:
    """Common random numbers: the same (run seed, task, sample, turn) is the same seed in any
    process (a stable hash, not Python's salted hash()); any other component changes it."""
    base = request_seed(0, "repo__pkg-1", 2, 3)
    assert base == request_seed(0, "repo__pkg-1", 2, 3)
    others = {request_seed(1, "repo__pkg-1", 2, 3), request_seed(0, "repo__pkg-2", 2, 3),
              request_seed(0, "repo__pkg-1", 3, 3), request_seed(0, "repo__pkg-1", 2, 4),
              request_seed(0, "repo__pkg-12", 2, 3), request_seed(0, "repo__pkg-1", 23, 3)}
    assert base not in others and len(others) == 6
    seeds = [request_seed(s, f"t{t}", k, n) for s in range(3) for t in range(5) for k in range(4) for n in range(5)]
    assert all(0 <= x < 2**31 for x in seeds) and len(set(seeds)) == len(seeds)


def test_flatten_aligns_ids_mask_logprobs_and_turns() -> None:
    flat = _episode().flatten()
    assert flat.input_ids == [1, 2, 3, 10, 11, 4, 5, 12]
    assert flat.loss_mask == [0, 0, 0, 1, 1, 0, 0, 1]
    assert flat.rollout_logprobs == [0.0, 0.0, 0.0, -0.5, -0.25, 0.0, 0.0, -1.0]
    assert flat.turn_index == [-1, -1, -1, 0, 0, -1, -1, 1]


def test_turn_rejects_misaligned_logprobs() -> None:
    with pytest.raises(ValueError, match="2 response tokens but 1 log-probs"):
        Turn(prompt_ids=[], response_ids=[1, 2], logprobs=[-0.1], finish_reason="stop")


def test_jsonl_round_trip_and_schema_version(tmp_path) -> None:
    path = tmp_path / "t.jsonl"
    write_episodes(path, [_episode(), _episode()])
    back = list(read_episodes(path))
    assert back == [_episode(), _episode()]
    assert json.loads(path.read_text().splitlines()[0])["schema_version"] == 2
    row = json.loads(path.read_text().splitlines()[0])
    row["schema_version"] = 99
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=r"t.jsonl:1: .*schema_version 99"):
        list(read_episodes(path))


def test_schema_1_records_still_read(tmp_path) -> None:
    """A record written before this round's bump (version 1: none of version 2's fields) reads
    as the same episode with version 2's defaults."""
    path = tmp_path / "v1.jsonl"
    v1 = {"instance_id": "a__b-1", "sample_index": 0, "termination": "finished", "error": None,
          "patch": "", "reward": 1.0, "grade_status": "resolved", "grade_reason": "", "model": "m",
          "wall_s": 1.0, "schema_version": 1,
          "turns": [{"prompt_ids": [1, 2], "response_ids": [3], "logprobs": [-0.5],
                     "finish_reason": "stop", "seed": 7, "policy_version": 0, "response_text": "x",
                     "tool_call": {"name": "finish", "arguments": {}}, "tool_error": None,
                     "observation": "", "observation_truncated": False, "generate_s": 0.1,
                     "tool_s": 0.0}]}
    path.write_text(json.dumps(v1) + "\n")
    (ep,) = read_episodes(path)
    assert ep.schema_version == 2 and ep.reward == 1.0 and ep.turns[0].response_ids == [3]
    assert ep.turns[0].tool_call.name == "finish"


# ---------------------------------------------------------------- incremental chat tokens


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from transformers import AutoTokenizer

    path = load_preset("tiny").default_path
    if not (path / "tokenizer.json").is_file():
        pytest.skip("tiny model not prepared (run `swe-aem model prepare tiny`)")
    return AutoTokenizer.from_pretrained(path)


def test_incremental_tokens_equal_full_render(tiny_tokenizer) -> None:
    """Initial prompt + sampled response (ending in end-of-turn) + glue decodes to exactly
    the chat template's rendering of the whole conversation."""
    tok = tiny_tokenizer
    chat = ChatTokens(tok, "xml")
    inst = SimpleNamespace(repo="acme/calc", base_commit="abc123", problem_statement="add() is wrong")
    ids = chat.initial_ids(inst)
    messages = chat.initial_messages(inst)
    for k, (response, obs) in enumerate([("I look.\n<function=finish>\n</function>", "out <1>"),
                                         ("Again", "(no output)")]):
        response_ids = tok.encode(response, add_special_tokens=False)
        if k == 0:
            response_ids.append(tok.eos_token_id)  # ended its turn itself
        glue = chat.observation_ids(response_ids, obs)
        ids += response_ids + glue
        messages += [{"role": "assistant", "content": response}, {"role": "user", "content": obs}]
    full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == full
    # the second response had no end-of-turn token: the glue supplied it exactly once
    assert full.count("<|im_end|>") == tok.decode(ids).count("<|im_end|>")


QWEN_STYLE_TEMPLATE = Path(__file__).parents[1] / "fixtures" / "qwen_style_chat_template.jinja"


def test_qwen_format_tools_in_template_and_tool_role_glue(tiny_tokenizer) -> None:
    """The native-format path: tools rendered by the chat template, observations as
    'tool' messages, incremental ids equal to the full render (Qwen-style template)."""
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = QWEN_STYLE_TEMPLATE.read_text()
    chat = ChatTokens(tok, "qwen")
    inst = SimpleNamespace(repo="acme/calc", base_commit="abc123", problem_statement="add() is wrong")
    ids = chat.initial_ids(inst)
    rendered = tok.decode(ids)
    assert '"name": "str_replace_editor"' in rendered and "<function=" not in rendered
    messages = chat.initial_messages(inst)
    call = tool_call_text("qwen", "execute_bash", command="ls")
    response_ids = tok.encode(call, add_special_tokens=False) + [tok.eos_token_id]
    ids += response_ids + chat.observation_ids(response_ids, "a.py")
    messages += [{"role": "assistant", "content": call}, {"role": "tool", "content": "a.py"}]
    full = tok.apply_chat_template(messages, tools=tool_schemas(), tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == full
    assert "<tool_response>\na.py\n</tool_response>" in full
    assert parse_tool_call(chat.decode(response_ids), "qwen") == ToolCall("execute_bash", {"command": "ls"})


def test_gemma_turn_template_folds_the_system_prompt_and_glues_exactly(tiny_tokenizer) -> None:
    """The gemma-270m preset's template (its base model ships none), on tiny's tokenizer
    given Gemma's two turn tokens: the system prompt goes into the first user turn, the
    generation prompt the scripted server counts turns by is Gemma's, and incremental ids
    equal the full render."""
    import copy

    from swe_aem.policy.models import GEMMA_CHAT_TEMPLATE
    from swe_aem.policy.scripted import generation_prompt

    tok = copy.deepcopy(tiny_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template, tok.eos_token = GEMMA_CHAT_TEMPLATE, "<end_of_turn>"
    assert generation_prompt(tok) == "<start_of_turn>model"
    assert generation_prompt(tiny_tokenizer) == "<|im_start|>assistant"
    chat = ChatTokens(tok, "xml")
    inst = SimpleNamespace(repo="acme/calc", base_commit="abc123", problem_statement="add() is wrong")
    ids = chat.initial_ids(inst)
    assert tok.decode(ids).startswith(f"{tok.bos_token}<start_of_turn>user\n{chat.system_prompt()}\n\nRepository")
    messages = chat.initial_messages(inst)
    for k, (response, obs) in enumerate([("I look.\n<function=finish>\n</function>", "out"), ("Again", "x")]):
        response_ids = tok.encode(response, add_special_tokens=False) + [tok.eos_token_id] * (k == 0)
        ids += response_ids + chat.observation_ids(response_ids, obs)
        messages += [{"role": "assistant", "content": response}, {"role": "user", "content": obs}]
    full = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == full
    assert full.endswith("<start_of_turn>model\nAgain<end_of_turn>\n<start_of_turn>user\nx<end_of_turn>\n"
                         "<start_of_turn>model\n")
