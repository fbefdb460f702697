"""Stall-free misses: fetch a layer's missed clusters while the step goes on.

`MissFetcher.start` issues the layer's one batched `ClusterSource.fetch` as soon as the ranking
has decided the misses. For a source that blocks the host (the KV-store link: an RPC plus a
gather) the call runs on a worker thread, so the estimation zone (and the hit lookup) are computed
meanwhile; `Pending.result()` joins it before the exact attention needs the misses. A graph-safe
(pure device) source is called inline: its work is already asynchronous on the device.

Deferred mode (`RetroInferConfig.defer_misses`): the step does not wait at all. Missed clusters
are estimated this step (they join the estimation zone) and the fetch runs in the background;
at the next step of the layer the fetched clusters are admitted into the wave buffer (LRU
bookkeeping of the deferred step happens then too), so they are exact hits from then on.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .source import ClusterSource, FetchedBatch


class Pending:
    """A fetch in flight (or already done, for inline sources)."""

    def __init__(self, future: Future[FetchedBatch] | None, done: FetchedBatch | None) -> None:
        self._future, self._done = future, done

    def result(self) -> FetchedBatch:
        if self._done is None:
            assert self._future is not None
            self._done = self._future.result()
        return self._done


@dataclass(slots=True)
class Deferred:
    """What a deferred step leaves for the next one: admission arguments and the fetch."""

    ret: torch.Tensor  # [R, n_ret] retrieved ids, best first
    ret_valid: torch.Tensor  # [R, n_ret]
    hit: torch.Tensor  # [R, n_ret]
    ret_sizes: torch.Tensor  # [R, n_ret]
    pending: Pending
    width: int  # miss tokens per row of the fetch


class MissFetcher:
    """Starts a layer's miss fetches; a background thread for host-blocking sources."""

    def __init__(
        self,
        source: ClusterSource,
        layer: int,
        sequence_ids: Sequence[Hashable | None],
        batch: int,
        kv_heads: int,
    ) -> None:
        # the layer's own list (not a copy): slots change as sequences come and go
        self.source, self.layer, self.sequence_ids = source, layer, sequence_ids
        self.batch, self.kv_heads = batch, kv_heads
        self.overlap = not source.graph_safe()  # a host-blocking fetch runs on a thread
        self.deferred: Deferred | None = None

    def start(self, miss_ids: torch.Tensor, width: int) -> Pending:
        """miss_ids [R, n] (-1 = none), `width` miss tokens per row."""
        ids = miss_ids.view(self.batch, self.kv_heads, -1)  # [B, Hkv, n]
        call: Callable[[], FetchedBatch] = lambda: self.source.fetch(  # noqa: E731
            self.layer, self.sequence_ids, ids, width
        )
        if not self.overlap:
            return Pending(None, call())
        return Pending(_pool().submit(call), None)

    def take_deferred(self) -> Deferred | None:
        deferred, self.deferred = self.deferred, None
        return deferred


_POOL: list[ThreadPoolExecutor] = []


def _pool() -> ThreadPoolExecutor:
    """One worker thread for every layer: a model's layers fetch one after another."""
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(1, thread_name_prefix="wavekv-miss"))
    return _POOL[0]


def empty_misses(
    rows: int, n_ret: int, head_dim: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An all-padding miss part of the execution buffer (deferred steps attend no misses):
    64 masked-out zero tokens per row (the buffer's copy kernels want a non-empty source)."""
    keys = torch.zeros(rows, 64, head_dim, dtype=dtype, device=device)  # [R, 64, D]
    offsets = torch.zeros(rows, n_ret + 1, dtype=torch.int64, device=device)  # [R, n + 1]
    return keys, keys, offsets


def device_batch(fetched: FetchedBatch, rows: int, n_ret: int, device: torch.device):  # type: ignore[no-untyped-def]
    """FetchedBatch -> (keys [R, W, D], values [R, W, D], offsets [R, n_ret + 1]) on device."""
    d = fetched.keys.shape[-1]
    return (
        fetched.keys.to(device).reshape(rows, -1, d),
        fetched.values.to(device).reshape(rows, -1, d),
        fetched.offsets.to(device).reshape(rows, n_ret + 1),
    )
