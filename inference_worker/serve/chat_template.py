"""The model's chat template: read from its GGUF metadata, rendered with Jinja2's sandbox.

`read_chat_template` is the one place that finds the template; once the model package exposes it
on the loaded tokenizer, point this function at that. Rendering follows what Hugging Face's
`apply_chat_template` does (sandboxed, `trim_blocks`/`lstrip_blocks`, `raise_exception`,
`add_generation_prompt`), and the rendered text is tokenized without adding special tokens
(a template writes its own BOS when the model wants one).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"


class ChatTemplateError(ValueError):
    """The model has no chat template, or the template refused the conversation."""


def read_chat_template(model_path: Path) -> str | None:
    """The Jinja chat template in a GGUF file's metadata, or None (a safetensors folder: its
    tokenizer_config.json's `chat_template`)."""
    if model_path.suffix == ".gguf":
        from gguf import GGUFReader

        field = GGUFReader(model_path).fields.get(CHAT_TEMPLATE_KEY)
        if field is None:
            return None
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    config = model_path / "tokenizer_config.json"
    if config.is_file():
        import json

        template = json.loads(config.read_text()).get("chat_template")
        return template if isinstance(template, str) else None
    return None


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
