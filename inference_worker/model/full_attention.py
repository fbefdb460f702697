"""Dense attention over preallocated KV caches (torch SDPA): the reference backend.

Global layers keep every token in a dense cache; local (sliding-window) layers keep a ring
of their last R = min(window, max_seq_len) tokens, since older keys are never attended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inference_worker.model.attention import AttentionMetadata
from inference_worker.model.config import ModelConfig

_EMPTY = torch.empty(0)  # placeholder of a _CallState field the call does not use


class FullAttentionBackend(nn.Module):
    """Exact attention of up to `max_batch_size` sequences of up to `max_seq_len` tokens.

    Cache row `slot` holds one sequence; the engine owns the bookkeeping of which sequence
    lives in which row and how many tokens it has (AttentionMetadata.start_pos / slots).
    Rows of different lengths are batched with right padding and per-sequence lengths (no
    left padding): padding tokens are written to a scratch column and never attended to.

    sliding_window: None (every layer global), an int (every layer local with that window:
    Mistral v0.1), or one entry per layer (None = global; Gemma 3's ModelConfig.layer_windows).
    Local layers all share one window size. A local layer's ring column `p % R` holds the
    K/V of position p; a call attends [ring as it was before the call | the call's own
    tokens] under a mask built from absolute positions, then writes the last R real tokens
    of each row into the ring (so chunked prefill and decode past the window are exact).
    scale: softmax scale of q.k (None: 1/sqrt(head_dim)).
    """

    k_cache: Tensor  # [Lg, Bmax, Hkv, S + 1, D] global layers (column S: padding scratch)
    v_cache: Tensor  # [Lg, Bmax, Hkv, S + 1, D]
    k_ring: Tensor  # [Ll, Bmax, Hkv, R + 1, D] local layers (column R: scratch)
    v_ring: Tensor  # [Ll, Bmax, Hkv, R + 1, D]

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_dim: int,
        max_batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        sliding_window: int | Sequence[int | None] | None = None,
        fixed_kv_len: bool = False,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if max_batch_size < 1 or max_seq_len < 1:
            raise ValueError(
                f"max_batch_size={max_batch_size} and max_seq_len={max_seq_len} must be >= 1"
            )
        self.max_batch_size = max_batch_size
        self.max_seq_len = max_seq_len
        self.layer_windows = _layer_windows(sliding_window, num_layers)
        windows = {w for w in self.layer_windows if w is not None}
        self.window = windows.pop() if windows else None  # the local layers' window
        self.ring_len = min(self.window or 0, max_seq_len)  # R
        # fixed_kv_len: global layers attend over all max_seq_len columns (masked) instead of
        # the kv_len prefix, so tensor shapes do not change between steps (CUDA graphs).
        self.fixed_kv_len = fixed_kv_len
        self.scale = scale
        # layer -> index into the caches (global layers) or into the rings (local layers)
        self.cache_index = _kind_index(self.layer_windows)
        n_global = sum(w is None for w in self.layer_windows)
        shape = (n_global, max_batch_size, num_kv_heads, max_seq_len + 1, head_dim)
        ring = (num_layers - n_global, max_batch_size, num_kv_heads, self.ring_len + 1, head_dim)
        for name, dims in (
            ("k_cache", shape),
            ("v_cache", shape),
            ("k_ring", ring),
            ("v_ring", ring),
        ):
            self.register_buffer(name, torch.zeros(dims, dtype=dtype, device=device))
        self._call: _CallState | None = None  # shared by every layer of one forward call

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
        """Caches shaped for `config` (use the model's compute dtype and device)."""
        return cls(
            config.num_layers,
            config.num_kv_heads,
            config.head_dim,
            max_batch_size,
            max_seq_len,
            dtype,
            device,
            config.layer_windows,
            fixed_kv_len,
            config.attention_scale,
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

    def cached_kv(self, layer: int, batch_size: int, length: int) -> tuple[Tensor, Tensor]:
        """Views of a global layer's cached keys and values of rows 0..B-1, positions
        0..length-1: ([B, Hkv, length, D], same). A local layer keeps no such history."""
        if self.layer_windows[layer] is not None:
            raise ValueError(f"layer {layer} is a sliding-window layer: it caches no full history")
        if length > self.max_seq_len or batch_size > self.max_batch_size:
            raise ValueError(
                f"batch_size={batch_size}, length={length} exceed the cache "
                f"({self.max_batch_size} rows, max_seq_len={self.max_seq_len})"
            )
        i = self.cache_index[layer]
        return self.k_cache[i, :batch_size, :, :length], self.v_cache[i, :batch_size, :, :length]

    def copy_from(self, other: FullAttentionBackend) -> None:
        """Take over the cached tokens of `other`, a backend of the same model with at most
        this one's max_seq_len (growing a cache: rows kept). Ring columns keep their meaning
        because a smaller ring (R = max_seq_len < window) only ever held positions < R."""
        if other.layer_windows != self.layer_windows or other.max_seq_len > self.max_seq_len:
            raise ValueError(
                f"cannot copy a cache of max_seq_len={other.max_seq_len} (windows "
                f"{other.layer_windows}) into max_seq_len={self.max_seq_len} "
                f"(windows {self.layer_windows})"
            )
        rows, n, r = (
            min(self.max_batch_size, other.max_batch_size),
            other.max_seq_len,
            other.ring_len,
        )
        for mine, theirs, cols in (
            (self.k_cache, other.k_cache, n),
            (self.v_cache, other.v_cache, n),
            (self.k_ring, other.k_ring, r),
            (self.v_ring, other.v_ring, r),
        ):
            mine[:, :rows, :, :cols].copy_(theirs[:, :rows, :, :cols])
        self._call = None

    def forget_call(self) -> None:
        """Drop the per-call state so the next call rebuilds it (used around graph capture)."""
        self._call = None

    def _attend(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        if self._call is None or self._call.meta is not meta:
            self._call = self._prepare(meta)
        call, i = self._call, self.cache_index[layer]
        if self.layer_windows[layer] is None:
            self.k_cache[i][call.rows, :, call.cols] = k.transpose(1, 2)  # [B, T, Hkv, D]
            self.v_cache[i][call.rows, :, call.cols] = v.transpose(1, 2)
            keys, values = self._read(self.k_cache[i], self.v_cache[i], call.kv_cols, meta)
            mask = call.global_mask
        else:
            ring_k, ring_v = self._read(self.k_ring[i], self.v_ring[i], self.ring_len, meta)
            keys, values = torch.cat((ring_k, k), dim=2), torch.cat((ring_v, v), dim=2)
            self.k_ring[i][call.rows, :, call.ring_cols] = k.transpose(1, 2)  # [B, T, Hkv, D]
            self.v_ring[i][call.rows, :, call.ring_cols] = v.transpose(1, 2)
            mask = call.local_mask
        return F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, scale=self.scale, enable_gqa=True
        )  # [B, Hq, T, D]

    def _read(self, k: Tensor, v: Tensor, n: int, meta: AttentionMetadata) -> tuple[Tensor, Tensor]:
        """Columns 0..n-1 of the batch's rows of one layer's buffers: [B, Hkv, n, D] each."""
        if meta.slots is None:
            b = meta.batch_size
            return k[:b, :, :n], v[:b, :, :n]
        return k[meta.slots, :, :n], v[meta.slots, :, :n]

    def _prepare(self, meta: AttentionMetadata) -> _CallState:
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
        t = torch.arange(meta.chunk_len, device=device)  # [T]
        is_real = t[None, :] < meta.num_tokens[:, None]  # [B, T]
        slots = (
            meta.slots if meta.slots is not None else torch.arange(meta.batch_size, device=device)
        )
        kv_cols = self.max_seq_len if self.fixed_kv_len else meta.kv_len
        call = _CallState(meta, slots[:, None], kv_cols)
        if len(self.k_cache):
            call.cols = torch.where(is_real, meta.positions, self.max_seq_len)  # [B, T]
            call.global_mask = self._global_mask(meta, kv_cols)
        if len(self.k_ring):
            # the last R real tokens of each row go to the ring; padding and positions past
            # max_seq_len (graph warm-up) go to the scratch column R
            keep = is_real & (t[None, :] >= meta.num_tokens[:, None] - self.ring_len)
            keep &= meta.positions < self.max_seq_len
            call.ring_cols = torch.where(keep, meta.positions % self.ring_len, self.ring_len)
            call.local_mask = self._local_mask(meta, t)
        return call

    def _global_mask(self, meta: AttentionMetadata, kv_cols: int) -> Tensor:
        """[B, 1, T, kv_cols] bool, True where query (b, t) may attend cache column j."""
        cols = torch.arange(kv_cols, device=meta.positions.device)  # [kv_cols]
        return (cols <= meta.positions[:, :, None])[:, None]

    def _local_mask(self, meta: AttentionMetadata, t: Tensor) -> Tensor:
        """[B, 1, T, R + T] bool over [ring before the call | the call's tokens]."""
        assert self.window is not None
        r = self.ring_len
        j = torch.arange(r, device=t.device)  # [R]
        last = meta.start_pos[:, None] - 1  # [B, 1] last position cached before the call
        held = last - torch.remainder(last - j, r)  # [B, R] position in ring column j (<0: none)
        q_pos = meta.positions[:, :, None]  # [B, T, 1]
        ring_ok = (held[:, None, :] >= 0) & (q_pos - held[:, None, :] < self.window)  # [B, T, R]
        rel = t[:, None] - t[None, :]  # [T, T] query index minus key index
        own_ok = (rel >= 0) & (rel < self.window)  # [T, T]
        own_ok = own_ok.expand(meta.batch_size, -1, -1)  # [B, T, T]
        return torch.cat((ring_ok, own_ok), dim=-1)[:, None]


@dataclass(slots=True)
class _CallState:
    """What every layer of one forward call shares (built at its first layer)."""

    meta: AttentionMetadata
    rows: Tensor  # [B, 1] cache row per batch row
    kv_cols: int  # global cache columns attended
    cols: Tensor = _EMPTY  # [B, T] global cache column per token
    global_mask: Tensor = _EMPTY  # [B, 1, T, kv_cols] bool
    ring_cols: Tensor = _EMPTY  # [B, T] ring column per token
    local_mask: Tensor = _EMPTY  # [B, 1, T, R + T] bool


def _layer_windows(
    sliding_window: int | Sequence[int | None] | None, num_layers: int
) -> tuple[int | None, ...]:
    if sliding_window is None or isinstance(sliding_window, int):
        windows: tuple[int | None, ...] = (sliding_window,) * num_layers
    else:
        windows = tuple(sliding_window)
    if len(windows) != num_layers or any(w is not None and w < 1 for w in windows):
        raise ValueError(
            f"sliding_window={sliding_window!r} must be None, an int >= 1 or {num_layers} "
            "entries of None / int >= 1"
        )
    sizes = sorted({w for w in windows if w is not None})
    if len(sizes) > 1:
        raise ValueError(f"local layers must share one window, got {sizes}")
    return windows


def _kind_index(windows: Sequence[int | None]) -> list[int]:
    """Per layer: its index among the global layers or among the local layers."""
    counts = {True: 0, False: 0}
    out = []
    for w in windows:
        out.append(counts[w is None])
        counts[w is None] += 1
    return out
