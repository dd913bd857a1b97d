"""The agent's settings: one type for every place that runs episodes.

Training embeds it as `rollout.agent`, `swe-aem eval` as EvalSettings.agent, `swe-aem rollout`
and the SFT demonstrations build one from their options; each place chooses its own defaults
(a training episode on CPU is short, a DeepSWE evaluation long) but the fields, their meaning
and the resolution against a model preset are these. New agent switches go here.

Standard library only: the typed run config (swe_aem/config.py) imports it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class AgentConfig:
    """How an agent episode runs: its budgets, its sampling and the chat format. Fields left
    None take the model preset's value in `for_model`."""

    max_turns: int = 30
    """Assistant turns of an episode (then it ends as max_turns)."""
    max_context_tokens: int | None = None
    """Prompt + response of the last turn, capped at the model's window; None: the window.

    An episode with no room left ends as context_overflow. Unresolved (no preset), the agent
    keeps no cap of its own and the server refuses a prompt over its window.
    """
    max_new_tokens: int = 512
    """Tokens one turn may generate."""
    max_observation_chars: int = 8000
    """Longer tool outputs are cut to their head and tail, with a note."""
    episode_timeout_s: float = 1800.0
    """Wall-clock limit of an episode (s); then it ends as timeout."""
    tool_timeout_s: float = 60.0
    """Default limit of one tool command (s)."""
    temperature: float = 1.0
    """Sampling temperature; in training the trainer's log-probs and entropies use it too."""
    top_p: float = 1.0
    """Nucleus sampling; training takes 1 only.

    The trainer scores softmax(z / T) over the whole vocabulary, so a nucleus cut would
    sample another distribution than the one trained (refused by the config's validate).
    """
    max_malformed_calls: int = 3
    """Consecutive turns without a valid tool call that end the episode."""
    thinking: bool | None = None
    """Qwen3's thinking (the chat template's enable_thinking); None: the model preset's.

    On: each turn may think in <think>...</think> (sampled tokens: in the loss and AEM's
    entropy), the call is read after </think> only, no stop string ends a turn (it ends on
    EOS; see toolcalls.stop_strings), and each turn records its thinking span. None: the
    preset's `thinking` (on for qwen3-32b, as Qwen3 ships; off for the others).
    """
    tool_call_format: str | None = None
    """How tool calls are written (xml, qwen); None: the model preset's."""
    seed: int | None = None
    """The sampling seed; None: unseeded. In training the trainer sets it from trainer.seed.

    Each request is seeded from (seed, task, sample, turn), so two runs (two arms, a rerun)
    that sample the same weights see the same samples.
    """

    def for_model(self, preset: Any, **overrides: Any) -> AgentConfig:
        """These settings resolved for a model preset (and `overrides` applied first): the
        context capped at its window, its tool-call format and thinking where left None."""
        s = dataclasses.replace(self, **overrides)
        window = preset.max_model_len
        return dataclasses.replace(
            s, max_context_tokens=min(s.max_context_tokens or window, window),
            tool_call_format=s.tool_call_format or preset.tool_call_format,
            thinking=preset.thinking if s.thinking is None else s.thinking)
