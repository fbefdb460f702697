"""RetroInfer as the model's attention backend: dense chunked prefill, then wave-index decode.

Prefill runs full attention over a dense cache. After the last prefill chunk of a layer, that
layer's wave index is built on the device and its cluster-major segment is queued for upload to
the store (the upload proceeds on a background thread while the next layer computes). Decode
calls the layer's RetroInferLayer, which reads missed clusters from the store link.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from inference_worker.engine.store_link import StoreLink
from inference_worker.model import AttentionMetadata, FullAttentionBackend, ModelConfig
from inference_worker.retroinfer import RetroInferConfig, RetroInferLayer, StepStats
from inference_worker.retroinfer.stats import COUNT_NAMES


class RetroInferBackend:
    """Attention for B equal-length sequences (one batch group) over all layers."""

    def __init__(
        self,
        model_config: ModelConfig,
        retro_config: RetroInferConfig,
        link: StoreLink,
        sequence_ids: Sequence[str],
        prompt_len: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        c = model_config
        self.link, self.sequence_ids, self.prompt_len = link, list(sequence_ids), prompt_len
        self.layers = [
            RetroInferLayer(
                retro_config,
                i,
                c.num_heads,
                c.num_kv_heads,
                c.head_dim,
                link,
                self.sequence_ids,
                dtype,
                device,
            )
            for i in range(c.num_layers)
        ]
        self.dense: FullAttentionBackend | None = FullAttentionBackend.for_model(
            c, len(self.sequence_ids), prompt_len, dtype, device
        )
        self.totals: dict[str, Tensor] = {}  # counter name -> [] int64 on the device
        self.steps = 0
        self.index_updates = 0
        self.last_step: StepStats | None = None

    def prefill(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """q [B, Hq, T, D], k/v [B, Hkv, T, D] -> [B, Hq, T, D]; indexes the layer at the end."""
        if self.dense is None:
            raise RuntimeError("prefill after the prompt was indexed: one prompt per backend")
        out = self.dense.prefill(layer, q, k, v, meta)
        if meta.kv_len == self.prompt_len:
            b, n = len(self.sequence_ids), self.prompt_len
            keys = self.dense.k_cache[layer, :b, :, :n]  # [B, Hkv, L, D]
            values = self.dense.v_cache[layer, :b, :, :n]
            for segment in self.layers[layer].prefill(keys, values):
                self.link.upload(self.sequence_ids, segment)
            if layer == len(self.layers) - 1:
                self.dense = None  # the prompt now lives in the index + steady zones
        return out

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """q [B, Hq, 1, D], k/v [B, Hkv, 1, D] -> [B, Hq, 1, D]."""
        out, stats = self.layers[layer].decode(q[:, :, 0], k[:, :, 0], v[:, :, 0])
        self.record([stats], first_layer=layer == 0)
        return out.unsqueeze(2)

    def record(self, stats: Sequence[StepStats], first_layer: bool = True) -> None:
        """Account layers' decode steps (a step replayed from a graph reports all layers at
        once): upload index updates, sum the counters."""
        for s in stats:
            if s.new_segment is not None:
                self.link.upload(self.sequence_ids, s.new_segment)
                self.index_updates += 1
            for name, value in s.counts.items():
                self.totals[name] = self.totals.get(name, 0) + value
            self.last_step = s
        if first_layer:
            self.steps += 1

    def summary(self) -> dict[str, object]:
        """Counters over all decode steps and layers (synchronises with the device). The
        same keys every time; `indexed` False with the reason when the prompt was too short
        for an index (the request then ran as full attention until an index update)."""
        totals = {name: int(self.totals.get(name, 0)) for name in COUNT_NAMES}
        hits, misses = totals["hits"], totals["misses"]
        last = self.last_step
        threshold = self.layers[0].config.index_threshold
        indexed = self.prompt_len >= threshold
        return {
            **totals,
            "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
            "index_updates": self.index_updates,
            "indexed": indexed,
            "not_indexed_reason": None
            if indexed
            else f"prompt of {self.prompt_len} tokens is below the index threshold of "
            f"{threshold} tokens (sink + window + update_tokens)",
            "num_clusters": self.layers[0].num_clusters,
            "retrieval_clusters": last.retrieval_clusters if last else 0,
            "estimation_clusters": last.estimation_clusters if last else 0,
        }
