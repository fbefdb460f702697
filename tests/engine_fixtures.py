"""Helpers for the engine tests: prompts from the eval generators and spying store links."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from client import KVStoreClient
from inference_worker.engine import GenerationEngine, GrpcStoreLink
from inference_worker.eval.haystack import make
from inference_worker.eval.prompt import Sample
from inference_worker.eval.tasks import make_sample
from inference_worker.eval.tokens import PieceEncoder
from inference_worker.model import LoadedModel
from inference_worker.retroinfer import FetchedBatch


def passkey_sample(engine: GenerationEngine, length: int, seed: int = 7) -> Sample:
    """A completion-style passkey prompt of exactly `length` tokens."""
    return make_sample("passkey", PieceEncoder(engine.tokenizer), length, 0, seed, depths=(0.5,))


def essay_tokens(engine: GenerationEngine, length: int, seed: int = 3) -> list[int]:
    """`length` tokens of natural-looking prose (the eval suite's essay haystack)."""
    rng = random.Random(seed)
    ids: list[int] = list(engine.tokenizer.encode(""))[:1]  # BOS if the tokenizer adds one
    for piece in make("essay", rng):
        ids.extend(engine.tokenizer.encode(piece, add_special_tokens=False))
        if len(ids) >= length:
            return ids[:length]
    raise AssertionError("the essay stream ended")


def natural_tokens(engine: GenerationEngine, start: int, length: int) -> list[int]:
    """`length` tokens of real English prose (Python's pydoc topics, shipped with CPython)."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = engine.tokenizer.encode(text)
    assert len(ids) >= start + length, f"pydoc topics hold only {len(ids)} tokens"
    return ids[start : start + length]


class WatchingLink(GrpcStoreLink):
    """A real gRPC link that also records what the store lists while decoding, and can run a
    hook (e.g. kill the store) before the n-th fetch."""

    def __init__(
        self,
        client: KVStoreClient,
        hook_at: int | None = None,
        hook=None,  # type: ignore[no-untyped-def]
        hook_every: int | None = None,
    ) -> None:
        super().__init__(client)
        self.listed_during_decode: list[str] | None = None
        self.fetches = 0
        self.hook_at, self.hook, self.hook_every = hook_at, hook, hook_every

    def fetch(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable],
        cluster_ids: torch.Tensor,
        max_tokens: int,
    ) -> FetchedBatch:
        self.fetches += 1
        if self.listed_during_decode is None:
            self.listed_during_decode = [s.sequence_id for s in self.client.list_sequences()]
        due = self.fetches == self.hook_at or (
            self.hook_every is not None and self.fetches % self.hook_every == 0
        )
        if self.hook is not None and due:
            self.hook()
        return super().fetch(layer, sequence_ids, cluster_ids, max_tokens)


class IdsOnlyTokenizer:
    """The tokenizer of a random-weight test model (no vocabulary): token ids in, no text out,
    no EOS (every request runs to max_new_tokens)."""

    eos_token_ids: tuple[int, ...] = ()

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        raise ValueError("a random-weight test model has no vocabulary: pass token ids")


def tiny_gemma3_engine(folder: Path, window: int = 48) -> GenerationEngine:
    """A random fp32 tiny Gemma 3 (local and global layers, tests/model_fixtures.TINY_GEMMA3)
    with room for RetroInfer-sized prompts, in a GenerationEngine on the CPU."""
    from tests.model_fixtures import load_ours, save_tiny, tiny_hf_model

    hf = tiny_hf_model("gemma3", max_position_embeddings=4096, sliding_window=window)
    model = load_ours(save_tiny(hf, folder))
    tokenizer: Any = IdsOnlyTokenizer()
    loaded = LoadedModel(model, tokenizer, model.config, folder, torch.device("cpu"), torch.float32)
    return GenerationEngine(loaded)
