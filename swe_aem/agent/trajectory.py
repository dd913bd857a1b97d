"""Episode records: every token the policy saw and sampled, kept exactly.

One episode is a list of turns. Turn k holds the prompt tokens added since turn k-1's
response (turn 0: the whole initial prompt; later turns: the observation and chat
template glue) and the response tokens the server sampled, with their log-probs.
Concatenating prompt_ids + response_ids over the turns gives exactly the token
sequence the model was shown for its last response.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swe_aem.jsonl import read_jsonl, write_jsonl

# 2: the fields of this round (thinking spans, the sandbox_broken termination; later ones of
# the same round are optional fields of version 2 too). Version 1 records still read: every
# field version 2 added has a default that says "not recorded".
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
# sandbox_broken: the agent's own command made its sandbox unusable (a 0, trained); error: an
# infrastructure failure (retried, then dropped; never a reward)
TERMINATIONS = ("finished", "max_turns", "context_overflow", "timeout", "malformed_calls", "sandbox_broken",
                "error")


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class Turn:
    prompt_ids: list[int]  # tokens added before this response (mask 0)
    response_ids: list[int]  # tokens the policy sampled (mask 1)
    logprobs: list[float]  # rollout log-prob of each response token
    finish_reason: str  # the server's: "stop" or "length"
    seed: int | None = None  # the request's sampling seed (agent.loop.request_seed); None: unseeded
    # the version of the weights that sampled this turn (the trainer's step count when they were
    # pushed; 0: the weights the server started with); bounds staleness in asynchronous training
    policy_version: int = 0
    response_text: str = ""
    # thinking models: the response's first N tokens are its thinking (through the last
    # </think>; all of it when the thinking never closed). 0: no thinking, or not recorded
    # (thinking off, a version-1 record). They are sampled tokens: mask 1, in the loss and
    # in AEM's entropy like the rest of the response.
    thinking_tokens: int = 0
    tool_call: ToolCall | None = None
    tool_error: str | None = None  # parse or execution error shown to the model
    observation: str = ""  # what the model is shown next (after truncation)
    observation_truncated: bool = False
    generate_s: float = 0.0
    tool_s: float = 0.0

    def __post_init__(self) -> None:
        if len(self.logprobs) != len(self.response_ids):
            raise ValueError(
                f"turn has {len(self.response_ids)} response tokens but {len(self.logprobs)} log-probs"
            )
        if not 0 <= self.thinking_tokens <= len(self.response_ids):
            raise ValueError(
                f"turn has {self.thinking_tokens} thinking tokens, outside its "
                f"{len(self.response_ids)} response tokens"
            )


@dataclass(frozen=True)
class FlatEpisode:
    """The whole conversation as one sequence, as the trainer consumes it."""

    input_ids: list[int]
    loss_mask: list[int]  # 1 on sampled tokens, 0 on prompt / observation / glue
    rollout_logprobs: list[float]  # 0.0 where loss_mask is 0
    turn_index: list[int]  # assistant turn of a sampled token, -1 elsewhere


@dataclass
class Episode:
    instance_id: str
    sample_index: int
    turns: list[Turn] = field(default_factory=list)
    termination: str = "error"
    error: str | None = None
    patch: str = ""
    reward: float | None = None  # None until graded
    grade_status: str | None = None
    grade_reason: str | None = None
    # the grader's verdict per test: {kind: {test: status}} (kind FAIL_TO_PASS / PASS_TO_PASS,
    # status "pass" / "fail"; R2E-Gym's parsed map under "tests"); None: not recorded (a version-1
    # record, an ungraded episode, a grader without per-test results)
    grade_tests: dict[str, dict[str, str]] | None = None
    model: str = ""
    wall_s: float = 0.0
    schema_version: int = SCHEMA_VERSION

    def flatten(self) -> FlatEpisode:
        ids: list[int] = []
        mask: list[int] = []
        logps: list[float] = []
        turn_index: list[int] = []
        for k, turn in enumerate(self.turns):
            n, m = len(turn.prompt_ids), len(turn.response_ids)
            ids += turn.prompt_ids + turn.response_ids
            mask += [0] * n + [1] * m
            logps += [0.0] * n + list(turn.logprobs)
            turn_index += [-1] * n + [k] * m
        return FlatEpisode(ids, mask, logps, turn_index)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Episode:
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"episode record has schema_version {version!r}; this code reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}"
            )
        data = dict(data)
        data["schema_version"] = SCHEMA_VERSION  # read as the current version (defaults fill the rest)
        turns = []
        for raw in data.pop("turns"):
            raw = dict(raw)
            call = raw.pop("tool_call", None)
            turns.append(Turn(**raw, tool_call=ToolCall(**call) if call else None))
        return cls(**data, turns=turns)


def grade_tests_of(report: dict[str, Any] | None) -> dict[str, dict[str, str]] | None:
    """The per-test statuses of a grader's per-instance report (`GradeResult.report`), as the
    episode keeps them. swebench's and SWE-smith's `tests_status` hold {kind: {success: [...],
    failure: [...]}}; R2E-Gym's holds the parsed {test: status}. None when it has neither."""
    status = (report or {}).get("tests_status")
    if not isinstance(status, dict) or not status:
        return None
    if all(isinstance(v, dict) and {"success", "failure"} >= set(v) for v in status.values()):
        return {kind: {**{t: "pass" for t in v.get("success", [])}, **{t: "fail" for t in v.get("failure", [])}}
                for kind, v in status.items()}
    return {"tests": {str(t): str(v) for t, v in status.items()}}


def write_episodes(path: str | Path, episodes: Iterable[Episode], append: bool = False) -> None:
    write_jsonl(path, (ep.to_dict() for ep in episodes), append=append)


def read_episodes(path: str | Path) -> Iterator[Episode]:
    for where, row in read_jsonl(path):
        try:
            yield Episode.from_dict(row)
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{where}: bad episode record: {exc}") from exc
