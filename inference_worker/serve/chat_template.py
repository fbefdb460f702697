"""The model's chat template (the tokenizer's `chat_template`: GGUF metadata or the folder's
tokenizer config), rendered with Jinja2's sandbox. Rendering follows what Hugging Face's
`apply_chat_template` does (sandboxed, `trim_blocks`/`lstrip_blocks`, `raise_exception`,
`add_generation_prompt`), and the rendered text is tokenized without adding special tokens
(a template writes its own BOS when the model wants one).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any


class ChatTemplateError(ValueError):
    """The model has no chat template, or the template refused the conversation."""


class ChatTemplate:
    """A compiled template; `render(messages)` -> the prompt text ending with the assistant turn."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = "") -> None:
        self.source, self.bos_token, self.eos_token = source, bos_token, eos_token

    @cached_property
    def _template(self) -> Any:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise
        return env.from_string(self.source)

    def render(self, messages: list[dict[str, str]]) -> str:
        from jinja2 import TemplateError

        try:
            return str(
                self._template.render(
                    messages=messages,
                    add_generation_prompt=True,
                    bos_token=self.bos_token,
                    eos_token=self.eos_token,
                )
            )
        except TemplateError as err:
            raise ChatTemplateError(f"the chat template refused the messages: {err}") from err


def _raise(message: str) -> None:
    raise ChatTemplateError(message)
