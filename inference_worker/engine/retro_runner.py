"""RetroInfer for the engine: one cohort of equal-length sequences at a time.

The scheduler admits a cohort (requests of one prompt length) into an empty batch; its rows
prefill together, are indexed and uploaded to the store, and decode together until every row
is done (a finished row keeps feeding its last token, ignored). On CUDA with a capturable
store link the decode step is replayed from one CUDA graph (model and attention).
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
from inference_worker.retroinfer import RetroInferConfig

log = logging.getLogger(__name__)


class RetroCohortRunner:
    """Owns the current cohort's RetroInferBackend and its sequences in the store."""

    def __init__(
        self, loaded: LoadedModel, retro: RetroInferConfig, link: StoreLink, graphs: bool
    ) -> None:
        self.loaded, self.model, self.retro, self.link = loaded, loaded.model, retro, link
        self.graphs = graphs and loaded.device.type == "cuda"
        self.rows: list[Sequence] = []  # the cohort, row b = slot b
        self.done: set[int] = set()  # rows finished (released at the cohort's end)
        self.backend: RetroInferBackend | None = None
        self.decoder: GraphedRetroDecoder | None = None
        self._before = LinkCounters()

    def admit(self, seqs: list[Sequence]) -> None:
        """A new cohort (the scheduler admits only into an empty batch)."""
        assert self.backend is None and all(s.slot == i for i, s in enumerate(seqs))
        ids = [s.store_id for s in seqs]
        self._before = self.link.counters.snapshot()
        self.link.open(ids, self._geometry())
        c = self.loaded.config
        self.backend = RetroInferBackend(
            c, self.retro, self.link, ids, len(seqs[0].prompt), self.loaded.dtype,
            self.loaded.device,
        )  # fmt: skip
        self.rows, self.done, self.decoder = list(seqs), set(), None

    def prefill(self, seqs: list[Sequence], chunk: int) -> Tensor:
        """The whole cohort (aborted rows too) advances by one chunk; logits [n, V] of
        `seqs`."""
        assert self.backend is not None
        rows = self.rows
        start = rows[0].prefilled
        n = min(chunk, len(rows[0].prompt) - start)
        tokens = torch.tensor([s.prompt[start : start + n] for s in rows], device=self._dev)
        meta = AttentionMetadata.prefill([start] * len(rows), [n] * len(rows), self._dev)
        logits = self.model(tokens, meta, self.backend, last_only=True)  # [B, V]
        for seq in rows:
            seq.prefilled += n
        if rows[0].prefilled == len(rows[0].prompt):
            self.link.flush()  # every segment stored before the first decode step fetches
        return logits[[s.slot for s in seqs]]  # type: ignore[index]

    def decode(self, seqs: list[Sequence]) -> Tensor:
        """One step for every row of the cohort; logits [n, V] of `seqs` (rows by slot)."""
        assert self.backend is not None
        last = [r.out[-1] if r.out else r.prompt[-1] for r in self.rows]
        pos = self._position()
        tokens = torch.tensor(last, device=self._dev)  # [B]
        if self._use_graph():
            assert self.decoder is not None
            logits, stats = self.decoder.step(tokens, [pos] * len(self.rows))
            self.backend.record(stats)
        else:
            meta = AttentionMetadata.decode([pos] * len(self.rows), self._dev)
            logits = self.model(tokens.view(-1, 1), meta, self.backend, last_only=True)
        return logits[[s.slot for s in seqs]]  # type: ignore[index]

    def release(self, seq: Sequence) -> None:
        """seq is done; at the cohort's end its sequences leave the store."""
        assert seq.slot is not None
        self.done.add(seq.slot)  # row index = slot
        if len(self.done) == len(self.rows):
            self.link.release([s.store_id for s in self.rows])
            self.backend, self.decoder, self.rows = None, None, []

    def stats(self, seq: Sequence) -> dict[str, object]:
        """The cohort's RetroInfer counters so far (synchronises with the device)."""
        del seq
        if self.backend is None:
            return {}
        return {
            "batch_size": len(self.rows),
            **self.backend.summary(),
            **self.link.counters.since(self._before),
        }

    def _position(self) -> int:
        """The cohort's decode position: rows share it (finished ones feed their last token)."""
        return max(r.position for i, r in enumerate(self.rows) if i not in self.done)

    def _use_graph(self) -> bool:
        if not self.graphs or self.backend is None:
            return False
        if self.decoder is None:
            self.decoder = GraphedRetroDecoder(self.model, self.backend.layers)
        return True

    @property
    def _dev(self) -> torch.device:
        return self.loaded.device

    def _geometry(self) -> SequenceGeometry:
        c = self.loaded.config
        return SequenceGeometry(
            c.num_layers, c.num_kv_heads, c.head_dim, TORCH_TO_STORE_DTYPE[self.loaded.dtype]
        )
