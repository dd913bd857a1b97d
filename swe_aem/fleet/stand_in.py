"""Stand-in replicas for tests and benches: a ScriptedPolicyServer (the real HTTP routes,
weight pushes recorded) in each replica, in place of vLLM. Not a model."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from swe_aem.policy.scripted import ScriptedPolicyServer

FINISH = "<function=finish>\n</function>"


@dataclass
class ScriptedStandIn:
    """`ReplicaSpec(stand_in=ScriptedStandIn(...))`: a task whose prompt holds a key of
    `scripts` gets that script's turns (the last one repeated), any other task `default`.

    `latency_s` is slept in every completion (generation time, emulated); `die_after[i]` makes
    replica i's first server stop answering after that many completions (a crashed server:
    a restarted replica gets a healthy one).
    """

    scripts: dict[str, list[str]] = field(default_factory=dict)
    default: str = FINISH
    latency_s: float = 0.0
    die_after: dict[int, int] = field(default_factory=dict)

    def respond(self, prompt: str, turn: int) -> str:
        if self.latency_s:
            time.sleep(self.latency_s)
        for key, turns in self.scripts.items():
            if key in prompt:
                return turns[min(turn, len(turns) - 1)]
        return self.default

    def __call__(self, tokenizer: Any, *, replica: int, restarted: bool) -> ScriptedPolicyServer:
        die_after = None if restarted else self.die_after.get(replica)
        return ScriptedPolicyServer(tokenizer, self.respond, die_after=die_after, weight_routes=True).start()
