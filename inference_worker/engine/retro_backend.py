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
        if stats.new_segment is not None:
            self.link.upload(self.sequence_ids, stats.new_segment)
            self.index_updates += 1
        for name, value in stats.counts.items():
            self.totals[name] = self.totals.get(name, 0) + value
        if layer == 0:
            self.steps += 1
        self.last_step = stats
        return out.unsqueeze(2)

    def summary(self) -> dict[str, float | int]:
        """Counters over all decode steps and layers (synchronises with the device)."""
        totals = {k: int(v) for k, v in self.totals.items()}
        hits, misses = totals.get("hits", 0), totals.get("misses", 0)
        last = self.last_step
        return {
            **totals,
            "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
            "index_updates": self.index_updates,
            "num_clusters": self.layers[0].num_clusters,
            "retrieval_clusters": last.retrieval_clusters if last else 0,
            "estimation_clusters": last.estimation_clusters if last else 0,
        }
