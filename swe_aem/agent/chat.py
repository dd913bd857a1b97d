"""Token-in-token-out chat: prompt ids are built incrementally, never re-tokenised.

The initial prompt is rendered with the model's chat template once. After each
response only the new piece is tokenised: the text the template puts between the
end of an assistant message and the start of the next one (end-of-turn marker,
the observation message, the generation prompt). The sampled response ids are
kept as the server returned them.

Thinking models: `thinking` is passed to the chat template as `enable_thinking` (Qwen3's
switch: off, its generation prompt carries an empty `<think>\n\n</think>\n\n`). The
sampled thinking stays in the context of later turns, as Qwen3's template keeps the
reasoning of every assistant turn after the last user query (an agent episode has one
query; tool responses do not reset it), so for canonically formatted turns the ids equal
the template's rendering of the conversation with each turn's reasoning_content. With
thinking off the empty block stays in each turn's prompt ids too (what the model was
shown), where a full re-render would drop it from past turns.
"""

from __future__ import annotations

from typing import Any

from swe_aem.agent.toolcalls import THINK_END, prompt_text, tool_schemas, xml_tool_list

_MARK = "\u2063SWE_AEM_ASSISTANT_END\u2063"  # a string no model writes


class ChatTokens:
    """Renders one episode's conversation into token ids for a given tokenizer."""

    def __init__(self, tokenizer: Any, tool_call_format: str, thinking: bool = False) -> None:
        self.tokenizer = tokenizer
        self.fmt = tool_call_format
        self.thinking = thinking  # the template's enable_thinking
        # Qwen templates render tool results in a "tool" message; SmolLM2's knows only user.
        self.observation_role = "tool" if tool_call_format == "qwen" else "user"

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        tools = tool_schemas() if self.fmt == "qwen" else None
        return self.tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt,
            enable_thinking=self.thinking,
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def system_prompt(self) -> str:
        system = prompt_text("system.md")
        if self.fmt == "xml":
            system += "\n\n" + prompt_text("tools_xml.md", tool_list=xml_tool_list())
        return system

    def initial_messages(self, instance: Any) -> list[dict[str, str]]:
        user = prompt_text(
            "instance.md",
            repo=instance.repo,
            base_commit=instance.base_commit,
            problem_statement=instance.problem_statement.strip(),
        )
        return [{"role": "system", "content": self.system_prompt()}, {"role": "user", "content": user}]

    def initial_ids(self, instance: Any) -> list[int]:
        return self._encode(self._render(self.initial_messages(instance), add_generation_prompt=True))

    def decode(self, ids: list[int]) -> str:
        """A response's text as the parser sees it (special tokens such as end-of-turn dropped)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def thinking_tokens(self, ids: list[int]) -> int:
        """How many of a response's first tokens are its thinking: through the last
        `</think>`, or all of them but a final end-of-turn token when the thinking never
        closed; 0 with thinking off. Found on the ids (a `</think>` token) or, for a
        tokenizer without one, the shortest prefix whose text holds every `</think>`."""
        if not self.thinking or not ids:
            return 0
        end_id = self.tokenizer.convert_tokens_to_ids(THINK_END)
        if isinstance(end_id, int) and end_id != self.tokenizer.unk_token_id and end_id in ids:
            return len(ids) - ids[::-1].index(end_id)

        def closes(n: int) -> int:
            return self.tokenizer.decode(ids[:n], skip_special_tokens=False).count(THINK_END)

        total = closes(len(ids))
        if total == 0:
            return len(ids) - (ids[-1] == self.tokenizer.eos_token_id)
        lo, hi = 1, len(ids)  # the count only grows with the prefix: the first n reaching total
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if closes(mid) >= total else (mid + 1, hi)
        return lo

    def observation_ids(self, response_ids: list[int], observation: str) -> list[int]:
        """Ids that follow response_ids: end-of-turn (unless sampled), observation, next prompt."""
        stub = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                {"role": "assistant", "content": _MARK}]
        text = self._render(stub + [{"role": self.observation_role, "content": observation}],
                            add_generation_prompt=True)
        glue = text[text.index(_MARK) + len(_MARK):]
        if response_ids and response_ids[-1] == self.tokenizer.eos_token_id:
            eot = self.tokenizer.decode(response_ids[-1:])
            glue = glue.removeprefix(eot)
        return self._encode(glue)
