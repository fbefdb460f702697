"""RetroInfer as the model's attention backend: B batch slots over every layer.

A sequence is prefilled alone with full attention over a dense cache of its prompt (chunked).
After its last prompt chunk reaches a layer, that layer's wave index is built on the device and
the sequence takes its slot in the layer (`RetroInferLayer.admit`); the cluster-major segments
go to the store link (an upload that proceeds on a background thread while the next layer
computes). Decode steps run every slot of every layer; misses come from the store link.

Hybrid models (Gemma 3): only the global layers are indexed and stored (the store's geometry
counts them alone); the sliding-window layers keep their last `window` tokens per slot in
device rings (`WindowLayers`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
from torch import Tensor

from inference_worker.engine.store_link import StoreLink
from inference_worker.engine.window_layers import WindowLayers
from inference_worker.model import AttentionMetadata, FullAttentionBackend, ModelConfig
from inference_worker.retroinfer import (
    IndexSegment,
    RetroInferConfig,
    RetroInferLayer,
    StepOptions,
    StepStats,
)


class RetroInferBackend:
    """Attention for up to `batch` sequences (slots; `grow` adds more) over all layers:
    RetroInfer on the global layers (`by_layer`: model layer -> RetroInferLayer, numbered
    0..n-1 among themselves for the store), rings on the sliding-window ones (`window`)."""

    def __init__(
        self,
        model_config: ModelConfig,
        retro_config: RetroInferConfig,
        link: StoreLink,
        batch: int,
        dtype: torch.dtype,
        device: torch.device,
        options: StepOptions | None = None,
    ) -> None:
        c = model_config
        if not c.global_layers:
            raise ValueError(
                f"{c.family} model with every layer sliding-window: RetroInfer has nothing to "
                "index (use attention='full')"
            )
        self.model_config, self.link = c, link
        self.dtype, self.device = dtype, device
        self.by_layer = {
            layer: self._layer(retro_config, i, batch, options)
            for i, layer in enumerate(c.global_layers)
        }
        self.layers = list(self.by_layer.values())  # the indexed layers, in model order
        self.window = WindowLayers(c, batch, dtype, device) if c.local_layers else None
        self._dense: FullAttentionBackend | None = None  # the prompt being prefilled
        self._target: tuple[int, str, int] | None = None  # its slot, store id, length
        self.updates: dict[Hashable, int] = {}  # index updates per sequence (all layers)
        self.last_step: StepStats | None = None

    @property
    def batch(self) -> int:
        return self.layers[0].batch

    def grow(self, batch: int) -> None:
        for layer in self.layers:
            layer.grow(batch)
        if self.window is not None:
            self.window.grow(batch)

    def begin_prefill(self, slot: int, store_id: str, prompt_len: int) -> None:
        """The next prefill calls are one sequence's prompt chunks, for slot `slot`."""
        self._dense = FullAttentionBackend.for_model(
            self.model_config, 1, prompt_len, self.dtype, self.device
        )
        self._target = (slot, store_id, prompt_len)
        self.updates[store_id] = 0

    def prefill(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """q [1, Hq, T, D], k/v [1, Hkv, T, D] -> [1, Hq, T, D]; after the prompt's last chunk
        the sequence takes its slot in this layer (its index built and uploaded)."""
        if self._dense is None or self._target is None:
            raise RuntimeError("prefill without begin_prefill(): one prompt at a time")
        out = self._dense.prefill(layer, q, k, v, meta)
        slot, store_id, n = self._target
        if meta.kv_len == n:
            if self.window is not None and layer in self.window:
                self.window.take(layer, slot, self._dense)
            else:
                keys, values = self._dense.cached_kv(layer, 1, n)  # [1, Hkv, L, D] each
                self.by_layer[layer].admit([slot], [store_id], keys, values)
            if layer == self.model_config.num_layers - 1:
                self._dense, self._target = None, None  # the prompt lives in the index now
        return out

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """q [B, Hq, 1, D], k/v [B, Hkv, 1, D] -> [B, Hq, 1, D] (every slot)."""
        if self.window is not None and layer in self.window:
            return self.window.decode(layer, q, k, v, meta)
        out, stats = self.by_layer[layer].decode(q[:, :, 0], k[:, :, 0], v[:, :, 0])
        self.record([stats])
        return out.unsqueeze(2)

    def record(self, stats: Sequence[StepStats]) -> None:
        """Account layers' decode steps (a step replayed from a graph reports all layers at
        once; their segments were uploaded by on_segment)."""
        for s in stats:
            for owners, _ in s.new_segments:
                for owner in owners:
                    self.updates[owner] = self.updates.get(owner, 0) + 1
            self.last_step = s

    def release(self, slot: int) -> None:
        for layer in self.layers:
            layer.release(slot)

    def summary(self, slot: int, store_id: str, prompt_len: int) -> dict[str, object]:
        """One sequence's statistics over its decode steps and every indexed layer (one sync
        per layer). The same keys every time; `indexed` False with the reason when the prompt
        was too short for an index (it then ran as full attention until an index update).
        retrieved_fraction: the clusters retrieved per head over the clusters indexed;
        attention_mass: per indexed model layer, where the exact attention mass fell (sampled
        when StepOptions.mass_every is set; empty otherwise)."""
        totals = {"hits": 0, "misses": 0, "evicted": 0}
        for layer in self.layers:
            for name, value in layer.counters(slot).items():
                totals[name] += value
        hits, misses = totals["hits"], totals["misses"]
        last = self.last_step
        clusters = self.layers[0].meta.counts[slot]
        retrieved = min(last.retrieval_clusters, clusters) if last else 0
        threshold = self.layers[0].config.index_threshold
        indexed = prompt_len >= threshold
        reason = None if indexed else (
            f"prompt of {prompt_len} tokens is below the index threshold of {threshold} tokens "
            "(sink + window + update_tokens)"
        )  # fmt: skip
        return {
            **totals,
            "hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
            "index_updates": self.updates.get(store_id, 0),
            "indexed": indexed,
            "not_indexed_reason": reason,
            "num_clusters": clusters,
            "retrieved_fraction": retrieved / clusters if clusters else None,
            "indexed_layers": len(self.layers),
            "attention_mass": {
                str(i): mass
                for i, layer in self.by_layer.items()
                if (mass := layer.mass.summary(slot)) is not None
            },
            "retrieval_clusters": last.retrieval_clusters if last else 0,
            "estimation_clusters": last.estimation_clusters if last else 0,
        }

    def _layer(
        self, config: RetroInferConfig, i: int, batch: int, options: StepOptions | None
    ) -> RetroInferLayer:
        c = self.model_config
        return RetroInferLayer(
            config, i, c.num_heads, c.num_kv_heads, c.head_dim, self.link, [None] * batch,
            self.dtype, self.device, c.attention_scale, on_segment=self._upload,
            options=options,
        )  # fmt: skip

    def _upload(self, owners: list[Hashable], segment: IndexSegment) -> None:
        self.link.upload([str(o) for o in owners], segment)
