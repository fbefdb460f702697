"""Tokenizer from the same source as the weights (GGUF file or HF folder)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer


class Tokenizer:
    """Thin wrapper over a transformers tokenizer: encode/decode and the stop ids."""

    def __init__(self, hf_tokenizer: Any, extra_eos_ids: Iterable[int] = ()) -> None:
        self.hf = hf_tokenizer
        eos = [hf_tokenizer.eos_token_id, *extra_eos_ids]
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(i for i in eos if i is not None))
        self.bos_token_id: int | None = hf_tokenizer.bos_token_id
        self.pad_token_id: int | None = hf_tokenizer.pad_token_id

    @classmethod
    def from_path(cls, path: str | Path, extra_eos_ids: Iterable[int] = ()) -> Tokenizer:
        """A `.gguf` file (tokenizer from its metadata) or a HF folder."""
        path = Path(path)
        if path.suffix == ".gguf":
            hf = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        else:
            hf = AutoTokenizer.from_pretrained(str(path))
        return cls(hf, extra_eos_ids)

    @property
    def chat_template(self) -> str | None:
        """The Jinja chat template of the model (GGUF `tokenizer.chat_template` or the folder's
        tokenizer config); None for a model without one (Gemma 3 270M is a base model)."""
        template = getattr(self.hf, "chat_template", None)
        return template if isinstance(template, str) else None

    @property
    def vocab_size(self) -> int:
        return len(self.hf)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids; special tokens (e.g. Llama-2 BOS) follow the tokenizer's own policy."""
        return list(self.hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat conversation via the tokenizer's chat template (+ assistant turn);
        ValueError for a model without a chat template."""
        if self.chat_template is None:
            raise ValueError(
                f"tokenizer {self.hf.name_or_path!r} has no chat template: use completion prompts"
            )
        ids = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]
