"""RetroInfer for the engine: continuous batching over the layers' batch slots.

A request takes a free slot (the scheduler's), its prompt is prefilled alone in chunks (full
attention over a dense cache of the prompt) and indexed into its slot, layer by layer; every
decode step runs all slots (a free slot feeds a dummy token, its output ignored). The slots
grow (doubling, up to max_batch_size) when every one is taken. On CUDA the decode step is
replayed from one CUDA graph (model and attention) where every layer can capture its step.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from client import SequenceGeometry
from inference_worker.engine.retro_backend import RetroInferBackend
from inference_worker.engine.sequence import Sequence
from inference_worker.engine.store_link import TORCH_TO_STORE_DTYPE, LinkCounters, StoreLink
from inference_worker.model import AttentionMetadata, LoadedModel
from inference_worker.model.retro_graph import GraphedRetroDecoder
from inference_worker.retroinfer import RetroInferConfig, StepOptions

log = logging.getLogger(__name__)


class RetroSlotRunner:
    """Owns the RetroInfer backend (its layers' slots) and the sequences in the store."""

    def __init__(
        self,
        loaded: LoadedModel,
        retro: RetroInferConfig,
        link: StoreLink,
        max_batch_size: int,
        graphs: bool,
        options: StepOptions | None = None,
    ) -> None:
        self.loaded, self.model, self.link = loaded, loaded.model, link
        self.max_batch_size = max_batch_size
        self.graphs = graphs and loaded.device.type == "cuda"
        self.backend = RetroInferBackend(
            loaded.config, retro, link, 1, loaded.dtype, loaded.device, options
        )
        self.decoder: GraphedRetroDecoder | None = None
        self.held: dict[int, Sequence] = {}  # slot -> its sequence
        self._before: dict[str, LinkCounters] = {}  # store id -> link counters at admission

    def admit(self, seqs: list[Sequence]) -> None:
        """Sequences that took slots: room for them, their sequences opened in the store."""
        need = max(s.slot for s in seqs if s.slot is not None) + 1
        if need > self.backend.batch:
            self.backend.grow(min(max(need, 2 * self.backend.batch), self.max_batch_size))
            self.decoder = None
        for seq in seqs:
            self._before[seq.store_id] = self.link.counters.snapshot()
            self.link.open([seq.store_id], self._geometry())

    def prefill(self, seqs: list[Sequence], chunk: int) -> Tensor:
        """Advance each sequence's prompt by up to `chunk` tokens (one sequence at a time);
        logits [n, V] after each one's last prefilled token."""
        out = []
        for seq in seqs:
            assert seq.slot is not None
            start = seq.prefilled
            if start == 0:
                self.backend.begin_prefill(seq.slot, seq.store_id, len(seq.prompt))
            tokens = seq.prompt[start : start + chunk]
            meta = AttentionMetadata.prefill([start], [len(tokens)], self._dev)
            ids = torch.tensor([tokens], device=self._dev)  # [1, T]
            out.append(self.model(ids, meta, self.backend, last_only=True))  # [1, V]
            seq.prefilled += len(tokens)
            if seq.prefilled == len(seq.prompt):
                self.held[seq.slot] = seq
                self.link.flush()  # every segment stored before its first decode step
        return torch.cat(out)

    def decode(self, seqs: list[Sequence]) -> Tensor:
        """One step for every slot; logits [n, V] of `seqs` (their slots' rows)."""
        b = self.backend.batch
        tokens = torch.zeros(b, dtype=torch.int64)
        starts = [0] * b
        for slot, seq in self.held.items():
            tokens[slot], starts[slot] = seq.out[-1], seq.position
        tokens = tokens.to(self._dev)
        if self._use_graph():
            assert self.decoder is not None
            logits, stats = self.decoder.step(tokens, starts)
            self.backend.record(stats)
        else:
            meta = AttentionMetadata.decode(starts, self._dev)
            logits = self.model(tokens.view(b, 1), meta, self.backend, last_only=True)
        return logits[[s.slot for s in seqs]]  # type: ignore[index]

    def release(self, seq: Sequence) -> None:
        """The sequence leaves its slot and the store (also when it was still prefilling)."""
        if seq.slot is not None:
            self.held.pop(seq.slot, None)
            self.backend.release(seq.slot)
        self.link.release([seq.store_id])
        self._before.pop(seq.store_id, None)

    def stats(self, seq: Sequence) -> dict[str, object]:
        """The sequence's RetroInfer counters and its store traffic while it ran (the link's
        counters are the engine's: concurrent requests share them)."""
        if seq.slot is None or seq.store_id not in self._before:
            return {}
        return {
            **self.backend.summary(seq.slot, seq.store_id, len(seq.prompt)),
            **self.link.counters.since(self._before[seq.store_id]),
        }

    def _use_graph(self) -> bool:
        if not self.graphs:
            return False
        if self.decoder is None:
            self.decoder = GraphedRetroDecoder(
                self.model, self.backend.by_layer, self.backend.window
            )
        return True

    @property
    def _dev(self) -> torch.device:
        return self.loaded.device

    def _geometry(self) -> SequenceGeometry:
        """The store holds the indexed (global) layers only."""
        c = self.loaded.config
        return SequenceGeometry(
            len(c.global_layers),
            c.num_kv_heads,
            c.head_dim,
            TORCH_TO_STORE_DTYPE[self.loaded.dtype],
        )
