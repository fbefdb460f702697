"""Dense attention over a preallocated KV cache (torch SDPA): the reference backend."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference_worker.model.attention import AttentionMetadata
from inference_worker.model.config import ModelConfig


class FullAttentionBackend(nn.Module):
    """Keeps every token's K/V of up to `max_batch_size` sequences in dense buffers.

    Cache row `slot` holds one sequence; the engine owns the bookkeeping of which sequence
    lives in which row and how many tokens it has (AttentionMetadata.start_pos / slots).
    Rows of different lengths are batched with right padding and per-sequence lengths (no
    left padding): padding tokens are written to a scratch column past max_seq_len and are
    never attended to by real queries.
    """

    k_cache: Tensor  # [L, Bmax, Hkv, S + 1, D] (column S is the padding scratch column)
    v_cache: Tensor  # [L, Bmax, Hkv, S + 1, D]

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        sliding_window: int | None = None,
        fixed_kv_len: bool = False,
    ) -> None:
        super().__init__()
        if max_batch_size < 1 or max_seq_len < 1:
            raise ValueError(
                f"max_batch_size={max_batch_size} and max_seq_len={max_seq_len} must be >= 1"
            )
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.sliding_window = sliding_window
        # fixed_kv_len: attend over all max_seq_len columns (masked) instead of the kv_len
        # prefix, so tensor shapes do not change between steps (CUDA-graph capturable).
        self.fixed_kv_len = fixed_kv_len
        shape = (num_layers, max_batch_size, num_kv_heads, max_seq_len + 1, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device))
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device))
        # Per-call state shared by all layers of one forward call (built at its first layer).
        self._call_meta: AttentionMetadata | None = None
        self._mask = torch.empty(0, dtype=torch.bool)  # [B, 1, T, kv_len]
        self._cols = torch.empty(0, dtype=torch.int64)  # [B, T] cache column per token
        self._rows = torch.empty(0, dtype=torch.int64)  # [B, 1] cache row per batch row

    @classmethod
    def for_model(
        cls,
        config: ModelConfig,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        fixed_kv_len: bool = False,
    ) -> FullAttentionBackend:
        """A cache shaped for `config` (use the model's compute dtype and device)."""
        return cls(
            config.num_layers,
            config.num_kv_heads,
            config.head_dim,
            max_batch_size,
            max_seq_len,
            dtype,
            device,
            config.sliding_window,
            fixed_kv_len,
        )

    def prefill(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """q [B, Hq, T, D], k/v [B, Hkv, T, D] -> out [B, Hq, T, D]."""
        return self._attend(layer, q, k, v, meta)

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """q [B, Hq, 1, D], k/v [B, Hkv, 1, D] -> out [B, Hq, 1, D]."""
        return self._attend(layer, q, k, v, meta)

    def _attend(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        if self._call_meta is not meta:
            self._prepare(meta)
        self._write(layer, k, v, meta)
        keys, values = self._read(layer, meta)  # [B, Hkv, kv_len, D] each
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=self._mask, enable_gqa=True
        )  # [B, Hq, T, D]

    def forget_call(self) -> None:
        """Drop the per-call state so the next call rebuilds it (used around graph capture)."""
        self._call_meta = None

    def _prepare(self, meta: AttentionMetadata) -> None:
        """Validate one forward call and build what all its layers share (no device sync)."""
        if meta.kv_len > self.max_seq_len:
            raise ValueError(
                f"sequence length {meta.kv_len} exceeds the cache's max_seq_len={self.max_seq_len}"
            )
        rows = meta.batch_size if meta.slot_list is None else max(meta.slot_list) + 1
        if rows > self.max_batch_size:
            raise ValueError(
                f"batch needs cache row {rows - 1} but max_batch_size={self.max_batch_size}"
            )
        device = meta.positions.device
        t = torch.arange(meta.chunk_len, device=device)
        is_real = t[None, :] < meta.num_tokens[:, None]  # [B, T]
        self._cols = torch.where(is_real, meta.positions, self.max_seq_len)  # [B, T]
        slots = (
            meta.slots if meta.slots is not None else torch.arange(meta.batch_size, device=device)
        )
        self._rows = slots[:, None]  # [B, 1]
        self._mask = self._causal_mask(meta)  # [B, 1, T, kv_len]
        self._call_meta = meta

    def _write(self, layer: int, k: Tensor, v: Tensor, meta: AttentionMetadata) -> None:
        """Real tokens go to their positions, padding to the scratch column S."""
        self.k_cache[layer][self._rows, :, self._cols] = k.transpose(1, 2)  # [B, T, Hkv, D]
        self.v_cache[layer][self._rows, :, self._cols] = v.transpose(1, 2)

    def _attended_len(self, meta: AttentionMetadata) -> int:
        return self.max_seq_len if self.fixed_kv_len else meta.kv_len

    def _read(self, layer: int, meta: AttentionMetadata) -> tuple[Tensor, Tensor]:
        n = self._attended_len(meta)
        if meta.slots is None:
            b = meta.batch_size
            return self.k_cache[layer, :b, :, :n], self.v_cache[layer, :b, :, :n]
        return self.k_cache[layer][meta.slots, :, :n], self.v_cache[layer][meta.slots, :, :n]

    def _causal_mask(self, meta: AttentionMetadata) -> Tensor:
        """[B, 1, T, kv_len] bool, True where query (b, t) may attend key column j."""
        cols = torch.arange(self._attended_len(meta), device=meta.positions.device)  # [kv_len]
        q_pos = meta.positions[:, :, None]  # [B, T, 1]
        mask = cols <= q_pos  # [B, T, kv_len]
        if self.sliding_window is not None:
            mask &= q_pos - cols < self.sliding_window
        return mask[:, None]
