"""Demonstrations from gold patches: tool-call episodes run in real containers.

For each instance a scripted policy (ScriptedPolicyServer, the stand-in for vLLM at
the HTTP boundary) answers with the target model's own token ids of: steps that find
the code to change from what the agent can see, the `str_replace` / `create` calls
that make the gold edits, and `finish`. For a generated instance (it names its buggy
function) the finding is derived, not given: run a failing test, grep the package for
the function its output shows (a traceback frame or the test's call), view it from the
line grep printed. For any other instance it is a `view` of the lines the gold patch
changes. The agent loop runs the calls in the instance's container, the final
`git diff` is graded in a fresh one, and
only resolved episodes are kept: they hold exactly the tokens (prompt, observations,
template glue) a rollout of the same behaviour would hold. Their log-probs are the
stand-in's placeholder, not a model's: they are SFT data, not on-policy RL data.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swe_aem.agent.trajectory import Episode, write_episodes
from swe_aem.policy.scripted import editor_calls_for_patch, tool_call_text

DEMO_MODEL_NAME = "gold-demonstration"
_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+\d+(?:,\d+)? @@")


def edited_spans(patch: str) -> dict[str, tuple[int, int]]:
    """Container path -> (first, last) line of the current file that a unified diff's hunks
    cover (context included), for each file it modifies (not the ones it creates)."""
    spans: dict[str, tuple[int, int]] = {}
    old, path = "", ""
    for line in patch.splitlines():
        if line.startswith("--- "):
            old = line[4:].strip()
        elif line.startswith("+++ "):
            path = "" if old == "/dev/null" else "/testbed/" + line[4:].strip().removeprefix("b/")
        elif line.startswith("@@") and path:
            m = _HUNK.match(line)
            if m is None:
                raise ValueError(f"bad hunk header in the gold patch: {line!r}")
            first = int(m.group(1))
            last = first + max(int(m.group(2) or 1), 1) - 1
            lo, hi = spans.get(path, (first, last))
            spans[path] = (min(lo, first), max(hi, last))
    return spans


# A turn is its text, or a function of the prompt so far when it reads an observation
# (the line `grep -n` printed) the way the agent would have to.
Turn = str | Callable[[str], str]
VIEW_LINES = 20  # a function is viewed from its `def` line, this many lines (the generated suite's are short)


def demonstration_turns(inst: Any, fmt: str) -> list[Turn]:
    """The assistant turns of one demonstration: find the code, edit, finish."""
    extra = getattr(inst, "extra", {}) or {}
    located = bool(extra.get("function") and extra.get("file") and inst.FAIL_TO_PASS)
    # a located function's edit carries just the changed lines, which the model can copy
    # from its view of the function (a line that is not unique in the file fails the edit,
    # and the demonstration is not kept); a viewed span's edit is the diff's whole hunk
    edits = editor_calls_for_patch(inst.patch, fmt, context=0 if located else None)
    if not edits:
        raise ValueError("the gold patch makes no edit (empty or not a unified diff)")
    spans = edited_spans(inst.patch)
    if located:
        test = inst.FAIL_TO_PASS[0].split("[")[0]  # every parametrisation: ids may hold spaces
        turns = locating_turns(test, extra["file"], extra["function"], spans, fmt)
    else:
        # the look is a `view` of the hunks' span, not of the whole file: it shows what the
        # edit needs and keeps a demonstration (and so SFT on CPU) short
        turns = [f"Let me read the code in {path}.\n"
                 + tool_call_text(fmt, "str_replace_editor", command="view", path=path,
                                  view_range=f"[{first}, {last}]")
                 for path, (first, last) in spans.items()]
    turns += [f"Now I make the change.\n{call}" for call in edits]
    turns.append("The issue is fixed.\n" + tool_call_text(fmt, "finish", message="Fixed the issue."))
    return turns


def locating_turns(test: str, file: str, function: str, spans: dict[str, tuple[int, int]], fmt: str
                   ) -> list[Turn]:
    """Run the failing test (its traceback shows the call), grep the package for the
    function's `def`, view VIEW_LINES lines from the line grep printed (further only when
    the gold edit reaches past them)."""
    package = file.split("/")[0]
    name = function.split(".")[-1]
    path = "/testbed/" + file
    _, last = spans.get(path, (0, 0))
    found = re.compile(rf"^{re.escape(file)}:(\d+):\s*def {re.escape(name)}\(", re.MULTILINE)

    def view(prompt: str) -> str:
        lines = [int(m.group(1)) for m in found.finditer(prompt)]
        if not lines:
            raise RuntimeError(f"grep printed no `def {name}(` in {file}")
        start = lines[-1]
        end = max(start + VIEW_LINES - 1, last)
        return (f"The function is at line {start} of {file}. Let me read it.\n"
                + tool_call_text(fmt, "str_replace_editor", command="view", path=path,
                                 view_range=f"[{start}, {end}]"))

    # a traceback frame of the package: `pkg/mod.py:62: in name`
    frame = re.compile(rf"^{re.escape(package)}/\S+\.py:\d+: in (\S+)$", re.MULTILINE)

    def grep(prompt: str) -> str:
        # name the function where the test's output shows it, so that the model learns to
        # read the name there (the test's id often names another: test_roman, from_roman);
        # "ends in" only when the package's last frame is the function's
        frames = frame.findall(prompt)
        where = "The traceback ends in" if frames and frames[-1] == name else "The test calls"
        return (f"{where} `{name}`. Let me find where it is defined.\n"
                + tool_call_text(fmt, "execute_bash", command=f'grep -rn "def {name}(" {package}/'))

    return [
        "Let me run a failing test to see where it breaks.\n"
        + tool_call_text(fmt, "execute_bash", command=f"python -m pytest -x -qq --tb=short '{test}' 2>&1 | tail -n 15"),
        grep,
        view,
    ]


def script_by_prompt(instances: Sequence[Any], user_text: Callable[[Any], str], fmt: str
                     ) -> dict[str, list[Turn]]:
    """Each instance's demonstration keyed by its first user message (what the scripted
    server can see); two instances with one prompt but different gold patches are an error."""
    scripts: dict[str, list[Turn]] = {}
    first: dict[str, Any] = {}  # prompt -> the instance that scripted it
    for inst in instances:
        key = user_text(inst)
        if key in first and first[key].patch != inst.patch:
            raise ValueError(f"instances {first[key].instance_id} and {inst.instance_id} have the same prompt "
                             "but different gold patches: a demonstration cannot tell them apart")
        scripts[key], first[key] = demonstration_turns(inst, fmt), inst
    return scripts


@dataclass
class DemoReport:
    kept: int
    rejected: dict[str, str] = field(default_factory=dict)  # instance id -> why (grade or termination)
    dropped: dict[str, str] = field(default_factory=dict)  # instance id -> infrastructure failure
    seconds: float = 0.0

    @property
    def demos_per_minute(self) -> float:
        return 60.0 * self.kept / self.seconds if self.seconds > 0 else 0.0


def rejection(ep: Episode) -> str | None:
    """Why a demonstration episode is not kept (None: kept). It must finish resolved, and
    without a failed tool call: a demonstration teaches every turn it shows (a view past
    the end of the file once failed in 11 of 24, and taught the failure too)."""
    failed = next((t.tool_error for t in ep.turns if t.tool_error), None)
    if failed is not None:
        return f"a tool call failed: {failed[:200]}"
    if ep.reward != 1.0 or ep.termination != "finished":
        return f"{ep.termination}, {ep.grade_status}: {ep.grade_reason}"
    return None


def make_demonstrations(instances: Sequence[Any], model: str, out: str | Path, *, concurrency: int = 2,
                        grade_timeout_s: float = 300.0, progress: bool = True) -> DemoReport:
    """Run one gold demonstration per instance, grade it, write the resolved ones to `out`."""
    from transformers import AutoTokenizer

    from swe_aem.agent.chat import ChatTokens
    from swe_aem.agent.harness import open_harness
    from swe_aem.agent.settings import AgentConfig
    from swe_aem.policy.client import PolicyClient
    from swe_aem.policy.models import resolve_model
    from swe_aem.policy.scripted import ScriptedPolicyServer
    from swe_aem.reward import grader

    if not instances:
        raise ValueError("no instances to demonstrate")
    preset, model_path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    fmt = preset.tool_call_format
    chat = ChatTokens(tokenizer, fmt)
    scripts = script_by_prompt(instances, lambda inst: chat.initial_messages(inst)[1]["content"], fmt)

    def respond(prompt: str, turn: int) -> str:
        turns = next((t for key, t in scripts.items() if key in prompt), None)
        if turns is None:
            raise RuntimeError("scripted demonstration got a prompt of no known instance")
        step = turns[min(turn, len(turns) - 1)]
        return step if isinstance(step, str) else step(prompt)

    # a turn computed from the prompt is a short grep or view call: 96 tokens bound it
    longest = max(len(tokenizer.encode(t, add_special_tokens=False)) if isinstance(t, str) else 96
                  for ts in scripts.values() for t in ts)
    # thinking off: a gold edit has no reasoning to show, so the demonstration is written in the
    # template's no-thinking form (Qwen3: an empty <think></think> in the prompt, not sampled)
    config = AgentConfig(max_new_tokens=longest + 8, temperature=0.0,
                         max_turns=max(len(t) for t in scripts.values()) + 1, thinking=False).for_model(preset)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    report = DemoReport(kept=0)

    def keep(ep: Episode) -> None:
        why = rejection(ep)
        if why is None:
            write_episodes(out, [ep], append=True)
            report.kept += 1
        else:
            report.rejected[ep.instance_id] = why

    start = time.monotonic()
    with ScriptedPolicyServer(tokenizer, respond) as server, \
            open_harness(model_path, preset, concurrency=concurrency,
                         client=PolicyClient(server.base_url, model=DEMO_MODEL_NAME)) as h:
        result = h.rollout(instances, 1, tokenizer=tokenizer, config=config,
                           grade=grader(h.grade_pool, timeout=grade_timeout_s), concurrency=concurrency,
                           progress=progress, on_episode=keep)
    report.dropped = {d.instance_id: d.reason for d in result.dropped}
    report.seconds = time.monotonic() - start
    return report
