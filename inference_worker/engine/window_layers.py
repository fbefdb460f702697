"""The sliding-window layers of a hybrid model (Gemma 3: 5 of every 6 layers) under RetroInfer.

A local layer only ever attends its last `window` tokens, so it needs neither a wave index nor
the store: each batch slot keeps a ring of those tokens on the device (FullAttentionBackend's
ring, exact for decode past the window). After a prompt's prefill the ring row of its dense
prefill cache moves into the sequence's slot.
"""

from __future__ import annotations

import torch
from torch import Tensor

from inference_worker.model import AttentionMetadata, FullAttentionBackend, ModelConfig


class WindowLayers:
    """Device rings of every local layer of `config` for `batch` slots (a WindowBackend)."""

    def __init__(
        self, config: ModelConfig, batch: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        if not config.local_layers:
            raise ValueError("the model has no sliding-window layers")
        self.config, self.dtype, self.device = config, dtype, device
        self.index = {layer: i for i, layer in enumerate(config.local_layers)}  # model -> ring
        self.rings = self._rings(batch)

    def _rings(self, batch: int) -> FullAttentionBackend:
        c = self.config
        return FullAttentionBackend(
            len(self.index), c.num_kv_heads, c.head_dim, batch, c.max_position_embeddings,
            self.dtype, self.device, sliding_window=c.sliding_window, scale=c.attention_scale,
        )  # fmt: skip

    def __contains__(self, layer: int) -> bool:
        return layer in self.index

    def grow(self, batch: int) -> None:
        """Room for `batch` slots; the rings of the current slots are kept."""
        new = self._rings(batch)
        new.copy_from(self.rings)
        self.rings = new

    def take(self, layer: int, slot: int, dense: FullAttentionBackend) -> None:
        """Slot `slot` takes row 0 of `dense`'s ring of model layer `layer` (a prefilled
        prompt). Ring column p % R holds position p in both: a dense ring shorter than the
        window (a prompt shorter than it) only holds positions < its length."""
        i, j, r = self.index[layer], dense.cache_index[layer], dense.ring_len
        self.rings.k_ring[i, slot, :, :r].copy_(dense.k_ring[j, 0, :, :r])  # [Hkv, R, D]
        self.rings.v_ring[i, slot, :, :r].copy_(dense.v_ring[j, 0, :, :r])

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """Every slot: q [B, Hq, 1, D], k/v [B, Hkv, 1, D] -> [B, Hq, 1, D]; meta.start_pos
        holds each slot's position (free slots write their own unused ring)."""
        return self.rings.decode(self.index[layer], q, k, v, meta)

    def forget_call(self) -> None:
        self.rings.forget_call()
