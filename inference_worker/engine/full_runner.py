"""Full attention for the engine: a dense KV cache with one row per batch slot.

Prefill writes a sequence's prompt into its slot's row chunk by chunk; a decode step feeds
the running slots' last tokens. Where the running slots are rows 0..n-1 and the device is CUDA,
the step is replayed from a CUDA graph captured for n rows (one graph per n, captured on first
use); otherwise it runs eagerly over the running slots.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from inference_worker.engine.sequence import Sequence
from inference_worker.engine.store_link import LinkCounters
from inference_worker.model import AttentionMetadata, FullAttentionBackend, LoadedModel
from inference_worker.model.cuda_graph import GraphedDecoder

_GROW = 1024  # the cache's length grows in steps of this many tokens


class FullAttentionRunner:
    """Owns the dense cache of `max_batch_size` slots, sized to the longest request so far."""

    def __init__(self, loaded: LoadedModel, max_batch_size: int, graphs: bool) -> None:
        self.loaded, self.model = loaded, loaded.model
        self.max_batch_size = max_batch_size
        self.graphs = graphs and loaded.device.type == "cuda"
        self.cache: FullAttentionBackend | None = None
        self._decoders: dict[int, GraphedDecoder] = {}  # rows -> captured step

    def admit(self, seqs: list[Sequence]) -> None:
        self._ensure_length(max(s.max_length for s in seqs))

    def prefill(self, seqs: list[Sequence], chunk: int) -> Tensor:
        """Advance each sequence's prompt by up to `chunk` tokens; logits [n, V] after each
        sequence's last prefilled token (meaningful once its prompt is complete)."""
        assert self.cache is not None
        out = []
        for seq in seqs:
            assert seq.slot is not None
            start = seq.prefilled
            tokens = seq.prompt[start : start + chunk]
            meta = AttentionMetadata.prefill([start], [len(tokens)], self.loaded.device, [seq.slot])
            ids = torch.tensor([tokens], device=self.loaded.device)  # [1, T]
            out.append(self.model(ids, meta, self.cache, last_only=True))  # [1, V]
            seq.prefilled += len(tokens)
        return torch.cat(out)

    def decode(self, seqs: list[Sequence]) -> Tensor:
        """One token for each sequence (its last generated one); logits [n, V] in seqs order."""
        assert self.cache is not None
        slots = [s.slot for s in seqs]
        tokens = torch.tensor([s.out[-1] for s in seqs], device=self.loaded.device)  # [n]
        starts = [s.position for s in seqs]
        contiguous = slots == list(range(len(seqs)))  # rows 0..n-1: no gather of cache rows
        if self.graphs and contiguous:
            return self._decoder(len(seqs)).step(tokens, starts)
        rows = None if contiguous else [s for s in slots if s is not None]
        meta = AttentionMetadata.decode(starts, self.loaded.device, rows)
        return self.model(tokens.view(-1, 1), meta, self.cache, last_only=True)  # [n, V]

    def release(self, seq: Sequence) -> None:
        del seq  # the slot's row is overwritten by its next sequence

    def stats(self, seq: Sequence) -> dict[str, object]:
        """The engine's statistics keys, as full attention has them (no index, no store)."""
        del seq
        return {
            "hits": 0, "misses": 0, "evicted": 0, "hit_ratio": 0.0, "index_updates": 0,
            "indexed": False, "not_indexed_reason": "full attention keeps every token",
            "num_clusters": 0, "retrieval_clusters": 0, "estimation_clusters": 0,
            "retrieved_fraction": None, "indexed_layers": 0, "attention_mass": {},
            **LinkCounters().since(LinkCounters()),
        }  # fmt: skip

    def _decoder(self, rows: int) -> GraphedDecoder:
        if rows not in self._decoders:
            assert self.cache is not None
            self._decoders[rows] = GraphedDecoder(self.model, self.cache, rows)
        return self._decoders[rows]

    def _ensure_length(self, length: int) -> None:
        """A cache of at least `length` tokens per slot (grown, rows kept, graphs dropped)."""
        if self.cache is not None and self.cache.max_seq_len >= length:
            return
        size = math.ceil(length / _GROW) * _GROW
        limit = self.loaded.config.max_position_embeddings
        new = self.loaded.new_full_attention(
            self.max_batch_size, min(size, max(limit, length)), fixed_kv_len=self.graphs
        )
        if self.cache is not None:
            new.copy_from(self.cache)  # global caches and local rings
        self.cache = new
        self._decoders.clear()
