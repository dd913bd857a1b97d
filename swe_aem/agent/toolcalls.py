"""Tool schemas (prompts/tools.json) and parsing tool calls out of the model's text.

Two formats: Qwen's native `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
for models whose chat template has one, and, for models whose template knows no
tools (SmolLM2), the XML function format documented in prompts/tools_xml.md:

    <function=execute_bash>
    <parameter=command>ls</parameter>
    </function>

Anything malformed raises ToolCallError with a message written for the model.

Thinking models (Qwen3) open a response with `<think>...</think>`. With thinking on, the
call is read only from the text after the thinking (after its last `</think>`, as Qwen3's
chat template and its documented parsing split a response): a `<tool_call>` drafted
inside the thinking is never run, and a response whose thinking never closes has no call.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

from swe_aem.agent.trajectory import ToolCall

PROMPT_DIR = Path(__file__).parent / "prompts"
STOP_STRINGS = {"xml": ("</function>",), "qwen": ("</tool_call>",)}
THINK_END = "</think>"  # closes a thinking model's reasoning (Qwen3)

_XML_CALL = re.compile(r"<function=([^>\s]*)>(.*?)</function>", re.DOTALL)
_XML_PARAM = re.compile(r"<parameter=([^>\s]*)>(.*?)</parameter>", re.DOTALL)
_QWEN_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


class ToolCallError(ValueError):
    """The response holds no well-formed call to a known tool."""


@cache
def tool_schemas() -> list[dict[str, Any]]:
    """OpenAI-style function schemas, as chat templates with tool support take them."""
    return json.loads((PROMPT_DIR / "tools.json").read_text())


def _schema(name: str) -> dict[str, Any]:
    for tool in tool_schemas():
        if tool["function"]["name"] == name:
            return tool["function"]
    known = ", ".join(t["function"]["name"] for t in tool_schemas())
    raise ToolCallError(f"unknown tool {name!r}; available tools: {known}")


def prompt_text(name: str, **values: Any) -> str:
    """A prompt file with $placeholders filled in."""
    return Template((PROMPT_DIR / name).read_text()).substitute(**values).strip()


def xml_tool_list() -> str:
    """Tool descriptions for the XML format's system prompt."""
    blocks = []
    for tool in tool_schemas():
        fn = tool["function"]
        required = set(fn["parameters"].get("required", []))
        lines = [f"## {fn['name']}", fn["description"], "Parameters:"]
        for pname, spec in fn["parameters"]["properties"].items():
            kind = spec["type"] + (f" one of {spec['enum']}" if "enum" in spec else "")
            need = "required" if pname in required else "optional"
            lines.append(f"- {pname} ({kind}, {need}): {spec['description']}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def stop_strings(fmt: str, thinking: bool) -> tuple[str, ...]:
    """The stop strings of a turn's request. With thinking on, none: a stop string is matched
    anywhere in the sampled text, so `</tool_call>` written inside the thinking would end the
    turn there; the turn ends on the model's end-of-turn token (EOS: Qwen3's template closes
    an assistant message with <|im_end|> after the call) or at max_tokens. Thinking off: the
    format's closing tag, so nothing is sampled after the call."""
    if fmt not in STOP_STRINGS:
        raise ValueError(f"unknown tool call format {fmt!r}")
    return () if thinking else STOP_STRINGS[fmt]


def after_thinking(text: str) -> str:
    """The answer part of a thinking response: the text after its last `</think>`.
    A response whose thinking never closes (cut at max_tokens, or ended while still
    thinking) has no answer: ToolCallError, written for the model."""
    _, sep, tail = text.rpartition(THINK_END)
    if not sep:
        raise ToolCallError(
            f"your thinking never closed: no {THINK_END} found, so there is no tool call; "
            f"think briefly, close with {THINK_END}, then write one tool call"
        )
    return tail


def parse_tool_call(text: str, fmt: str, thinking: bool = False) -> ToolCall:
    """The single tool call in a response, validated against its schema. With `thinking`
    the call is read only from the text after the thinking (after_thinking)."""
    if thinking:
        text = after_thinking(text)
    if fmt == "xml":
        calls = _XML_CALL.findall(text)
        if not calls:
            hint = " (the block must end with </function>)" if "<function=" in text else ""
            raise ToolCallError(f"no tool call found{hint}; write one <function=NAME>...</function> block")
        if len(calls) > 1:
            raise ToolCallError(f"found {len(calls)} tool calls; make exactly one per response")
        name, body = calls[0]
        args: dict[str, Any] = {}
        for pname, value in _XML_PARAM.findall(body):
            if pname in args:
                raise ToolCallError(f"parameter {pname!r} given twice")
            args[pname] = _strip_one_newline(value)
    elif fmt == "qwen":
        calls = _QWEN_CALL.findall(text)
        if not calls:
            raise ToolCallError(
                'no tool call found; write <tool_call>{"name": ..., "arguments": {...}}</tool_call>'
            )
        if len(calls) > 1:
            raise ToolCallError(f"found {len(calls)} tool calls; make exactly one per response")
        try:
            obj = json.loads(calls[0])
        except json.JSONDecodeError as exc:
            raise ToolCallError(f"tool call is not valid JSON: {exc}") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise ToolCallError('tool call JSON must be an object with a string "name"')
        name, args = obj["name"], obj.get("arguments", {})
        if isinstance(args, str):  # some models double-encode the arguments
            try:
                args = json.loads(args)
            except json.JSONDecodeError as exc:
                raise ToolCallError(f"tool call arguments are not valid JSON: {exc}") from None
        if not isinstance(args, dict):
            raise ToolCallError('tool call "arguments" must be a JSON object')
    else:
        raise ValueError(f"unknown tool call format {fmt!r}")
    return ToolCall(name=name, arguments=_validate(name, args))


def _strip_one_newline(value: str) -> str:
    value = value.removeprefix("\n")
    value = value.removesuffix("\n")
    return value


def _validate(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """Check names, required parameters, enums and types; coerce XML's string numbers."""
    params = _schema(name)["parameters"]
    props = params["properties"]
    unknown = set(args) - set(props)
    if unknown:
        raise ToolCallError(f"{name}: unknown parameter(s) {sorted(unknown)}; allowed: {sorted(props)}")
    missing = [p for p in params.get("required", []) if p not in args]
    if missing:
        raise ToolCallError(f"{name}: missing required parameter(s) {missing}")
    out: dict[str, Any] = {}
    for pname, value in args.items():
        spec = props[pname]
        out[pname] = _coerce(name, pname, value, spec)
        if "enum" in spec and out[pname] not in spec["enum"]:
            raise ToolCallError(f"{name}: {pname} must be one of {spec['enum']}, got {value!r}")
    return out


def _coerce(tool: str, pname: str, value: Any, spec: dict[str, Any]) -> Any:
    kind = spec["type"]
    try:
        if kind == "integer":
            if isinstance(value, bool):
                raise ValueError
            return int(value.strip()) if isinstance(value, str) else int(value)
        if kind == "array":
            value = json.loads(value) if isinstance(value, str) else value
            if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
                raise ValueError
            return value
        if kind == "string":
            if not isinstance(value, str):
                raise ValueError
            return value
    except (ValueError, TypeError, json.JSONDecodeError):
        pass
    else:
        return value
    raise ToolCallError(f"{tool}: parameter {pname!r} must be of type {kind}, got {value!r}")
