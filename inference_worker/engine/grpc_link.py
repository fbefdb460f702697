"""`GrpcStoreLink`: the engine's link to a real kvstore_server through the client SDK.

Misses are read in place from the store's shared-memory arena when the store is on this host
(`same_host`), otherwise fetched with one FetchClusters RPC per layer per decode step for all
(sequence, kv_head) rows of the batch. Uploads run on a background thread.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from client import (
    ArenaReader,
    ClientOptions,
    ClusterSegment,
    DescriptorCache,
    FetchRequest,
    KVStoreClient,
    KVStoreError,
    NotFoundError,
    ResolveFallback,
    SequenceGeometry,
    SharedMemoryUnavailable,
    StaleDescriptorError,
)
from client.head_table import HeadTable
from inference_worker.engine.store_link import (
    STORE_TO_TORCH_DTYPE,
    LinkCounters,
    StoreLink,
    StoreRestartedError,
    _segment_bytes,
)
from inference_worker.retroinfer import FetchedBatch, IndexSegment
from inference_worker.retroinfer.kernels.availability import interpreting
from inference_worker.retroinfer.kernels.cluster_table import ClusterRows

T = TypeVar("T")
log = logging.getLogger(__name__)

SAME_HOST_MODES = ("auto", "off", "require")


class GrpcStoreLink(StoreLink):
    """The real store through the SDK. Uploads run on a background thread (overlapping the
    next layer's prefill compute). Fetches are one RPC per call: with the store on this host
    (`same_host` "auto" finds out, "require" insists, "off" never tries) a FetchDescriptors
    RPC and a gather straight from the mapped shared-memory arena into the requesting device
    (a GPU gather from pinned host memory on CUDA); otherwise a FetchClusters stream. Both paths
    give bit-identical results; a stale descriptor (lease expired) falls back to streaming.
    With `local_resolve` (default) a same-host link resolves cluster ids itself from whole-head
    descriptors cached under a renewed lease (client.resolver): no RPC per call; calls the
    cache cannot answer take the per-call descriptor path."""

    def __init__(
        self, client: KVStoreClient, same_host: str = "auto", local_resolve: bool = True
    ) -> None:
        if same_host not in SAME_HOST_MODES:
            raise ValueError(f"same_host={same_host!r} is not one of {SAME_HOST_MODES}")
        self.client = client
        self.same_host, self.local_resolve = same_host, local_resolve
        self._arena: ArenaReader | None = None
        self._resolver: DescriptorCache | None = None
        self._base: torch.Tensor | None = None  # the arena's base address (cluster_base)
        self._attach()
        self.counters = LinkCounters()
        self._uploads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wavekv-upload")
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()
        self._incarnation: str | None = None
        self._head_dim, self._dtype, self._kv_heads = 1, torch.float32, 1  # set by open()

    def _attach(self) -> None:
        """Map the store's shared-memory arena (same_host permitting) and its descriptor
        cache."""
        if self.same_host != "off":
            try:
                self._arena = self.client.shared_arena()
            except SharedMemoryUnavailable:
                if self.same_host == "require":
                    raise
            if self._arena is None and self.same_host == "require":
                raise SharedMemoryUnavailable("store arena is not mappable from this host")
        log.info("store link: %s", "shared memory" if self._arena else "gRPC streaming")
        if self._arena is not None and self.local_resolve:
            self._resolver = DescriptorCache(self.client, self._arena)

    def reconnect(self) -> None:
        """After the store was lost: forget its arena, descriptors and incarnation, map the
        (new) store's arena. Raises if the store is still unreachable."""
        self.flush_quietly()
        if self._resolver is not None:
            self._resolver.close()
        self._arena = self._resolver = self._base = None
        self._incarnation = None
        self.client.wait_ready()
        self._attach()

    def flush_quietly(self) -> None:
        """Drop pending uploads, their errors too (the store they were for is gone)."""
        with self._lock:
            pending, self._pending = self._pending, []
        for fut in pending:
            try:
                fut.result()
            except Exception as exc:  # the sequence is prefilled again
                log.debug("upload to a lost store: %s", exc)

    def open(self, sequence_ids: Sequence[str], geometry: SequenceGeometry) -> None:
        self._head_dim, self._dtype = geometry.head_dim, STORE_TO_TORCH_DTYPE[geometry.dtype]
        self._kv_heads = geometry.num_kv_heads
        for sid in sequence_ids:
            info = self.client.create_sequence(sid, geometry)
            self._incarnation = info.incarnation_id

    def upload(self, sequence_ids: Sequence[str], segment: IndexSegment) -> None:
        cpu = {
            name: getattr(segment, name).detach().to("cpu")
            for name in ("centroids", "sizes", "value_sums", "keys", "values", "offsets")
        }
        per_seq = [
            [
                ClusterSegment(
                    layer=segment.layer,
                    kv_head=h,
                    centroids=cpu["centroids"][b, h],
                    sizes=cpu["sizes"][b, h],
                    value_sums=cpu["value_sums"][b, h],
                    keys=cpu["keys"][b, h],
                    values=cpu["values"][b, h],
                    offsets=cpu["offsets"][b, h],
                )
                for h in range(segment.sizes.shape[1])
            ]
            for b in range(len(sequence_ids))
        ]
        nbytes = _segment_bytes(segment)
        with self._lock:
            for sid, segments in zip(sequence_ids, per_seq, strict=True):
                self._pending.append(self._uploads.submit(self._put, sid, segments))
            self.counters.uploaded_bytes += nbytes

    def _put(self, sequence_id: str, segments: list[ClusterSegment]) -> None:
        first_ids = self.client.put_segments(sequence_id, segments)
        self.counters.put_rpcs += 1
        log.debug(
            "stored %d segments of %s, first cluster ids %s",
            len(segments),
            sequence_id,
            first_ids[:3],
        )

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for fut in pending:
            fut.result()

    def cluster_base(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The arena's base address (its first slab's mapping) as a tensor of the K/V dtype
        that the device's kernels address: a CUDA alias of the registered host memory (UVA),
        or the host mapping itself for the CPU interpreter. None without a same-host arena
        or before a sequence of this link was described."""
        if self._resolver is None or self._base is None:
            return None
        return self._base, self._base

    def cluster_rows(self, layer: int, sequence_id: Hashable) -> ClusterRows | None:
        """Where the sequence's clusters of `layer` lie in the arena, from a fresh whole-head
        description (its uploads stored first); None when the cache cannot describe them."""
        if self._resolver is None or not (torch.cuda.is_available() or interpreting()):
            return None
        heads = [(str(sequence_id), layer, h) for h in range(self._kv_heads)]
        self.flush()  # an index update of this sequence may still be on its way
        try:
            return self._rows_of(heads)
        except (ResolveFallback, StaleDescriptorError, KVStoreError) as exc:
            log.debug("no cluster rows for %s layer %d (%s)", sequence_id, layer, exc)
            return None

    def _rows_of(self, heads: list[tuple[str, int, int]]) -> ClusterRows:
        """The heads' clusters as element offsets from the arena's base (a fresh description,
        its lease renewed with the others while the cache lives)."""
        cache = self._resolver
        assert cache is not None
        with cache._lock:
            cache._renew_if_due()
            cache.table.drop(lambda key: key in set(heads))
            slots = cache._slots(heads)
            row_bytes, head_dim, dtype, _ = cache.table.geometry(slots)
            self._base = _base_tensor(cache, row_bytes, dtype)
            return _rows_from_table(cache.table, slots, head_dim)

    def fetch(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable | None],
        cluster_ids: torch.Tensor,
        max_tokens: int,
    ) -> FetchedBatch:
        held = [i for i, s in enumerate(sequence_ids) if s is not None]
        if len(held) < len(sequence_ids):  # free slots: nothing to fetch for them
            return self._fetch_held(layer, sequence_ids, held, cluster_ids, max_tokens)
        if self._resolver is not None and cluster_ids.numel():
            try:
                return self._fetch_resolved(layer, sequence_ids, cluster_ids, max_tokens)
            except (ResolveFallback, StaleDescriptorError, KVStoreError) as exc:
                log.debug("descriptor cache cannot serve this call (%s); per-call path", exc)
        ids = cluster_ids.to("cpu")  # [B, Hkv, n] int64, -1 = padding (one device sync)
        valid = ids >= 0  # [B, Hkv, n]
        requests, rows = self._requests(layer, sequence_ids, ids.numpy(), valid.numpy())
        if requests and self._arena is not None:
            try:
                return self._fetch_shared(
                    requests, ids, valid, rows, max_tokens, cluster_ids.device
                )
            except StaleDescriptorError as exc:
                log.warning("shared-memory fetch stale (%s); streaming this call", exc)
        fetched = self._fetch(requests) if requests else []
        return self._pack(ids, valid, rows, fetched, max_tokens)

    def _fetch_held(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable | None],
        held: list[int],
        cluster_ids: torch.Tensor,  # [B, Hkv, n]
        max_tokens: int,
    ) -> FetchedBatch:
        """The held rows fetched, free rows empty."""
        b, h, n = cluster_ids.shape
        dev = cluster_ids.device
        keys = torch.zeros(b, h, max_tokens, self._head_dim, dtype=self._dtype, device=dev)
        values = torch.zeros_like(keys)
        offsets = torch.zeros(b, h, n + 1, dtype=torch.int64, device=dev)
        if held:
            idx = torch.tensor(held, device=dev)
            got = self.fetch(layer, [sequence_ids[i] for i in held], cluster_ids[idx], max_tokens)
            keys[idx], values[idx] = got.keys.to(dev), got.values.to(dev)
            offsets[idx] = got.offsets.to(dev)
        return FetchedBatch(keys, values, offsets)

    @staticmethod
    def _requests(
        layer: int,
        sequence_ids: Sequence[Hashable],
        ids: np.ndarray,  # [B, Hkv, n] int64
        valid: np.ndarray,  # [B, Hkv, n] bool
    ) -> tuple[list[FetchRequest], list[tuple[int, int]]]:
        """One request per (sequence, kv_head) row with a valid id, in row-major order."""
        counts = valid.sum(-1)  # [B, Hkv]
        flat = ids[valid]  # [K] the valid ids, row by row
        bounds = np.concatenate([[0], np.cumsum(counts[counts > 0])]).tolist()
        rows = [(int(i), int(j)) for i, j in np.argwhere(counts > 0)]
        names = [str(s) for s in sequence_ids]
        requests = [
            FetchRequest(names[i], layer, j, flat[bounds[k] : bounds[k + 1]])
            for k, (i, j) in enumerate(rows)
        ]
        return requests, rows

    def _fetch_resolved(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable],
        cluster_ids: torch.Tensor,  # [B, Hkv, n] int64 on the compute device
        max_tokens: int,
    ) -> FetchedBatch:
        assert self._resolver is not None
        b, h, n = cluster_ids.shape
        heads = [(str(s), layer, j) for s in sequence_ids for j in range(h)]
        got = self._resolver.fetch(heads, cluster_ids.reshape(b * h, n), max_tokens)
        self.counters.fetch_rpcs += 1
        self.counters.local_fetches += 1
        self.counters.fetched_bytes += got.rows * 2 * got.keys.shape[-1] * got.keys.element_size()
        shape = (b, h, max_tokens, got.keys.shape[-1])
        offsets = got.offsets.view(b, h, n + 1)
        return FetchedBatch(got.keys.view(shape), got.values.view(shape), offsets)

    @property
    def uses_shared_memory(self) -> bool:
        return self._arena is not None

    def _fetch_shared(
        self,
        requests: list[FetchRequest],
        ids: torch.Tensor,  # [B, Hkv, n] int64 (cpu)
        valid: torch.Tensor,  # [B, Hkv, n] bool
        rows: list[tuple[int, int]],
        max_tokens: int,
        device: torch.device,
    ) -> FetchedBatch:
        assert self._arena is not None
        b, h, n = ids.shape
        batch = self._fetch_rpc(self.client.fetch_descriptors, requests)
        sizes = np.zeros((b, h, n), np.int64)  # [B, Hkv, n]
        sizes[valid.numpy()] = batch.lens  # entries are the valid rows in row-major order
        offsets = np.zeros((b, h, n + 1), np.int64)  # [B, Hkv, n + 1]
        np.cumsum(sizes, axis=-1, out=offsets[..., 1:])
        offsets_dev = self._arena.to_device(offsets, device)  # staged before the gather
        slots = [i * h + j for i, j in rows]
        keys, values = self._arena.gather_packed(batch, slots, b * h, max_tokens, device)
        self._arena.verify(batch)  # waits for the gather's reads, then checks generations
        self.client.done_with_lease(batch.lease_id)
        self.counters.fetched_bytes += (
            int(batch.lens.sum()) * 2 * self._head_dim * keys.element_size()
        )
        shape = (b, h, max_tokens, self._head_dim)
        return FetchedBatch(keys.view(shape), values.view(shape), offsets_dev)

    def _fetch(self, requests: list[FetchRequest]) -> list:
        return self._fetch_rpc(self.client.fetch_clusters, requests)

    def _fetch_rpc(self, rpc: Callable[[list[FetchRequest]], T], requests: list[FetchRequest]) -> T:
        """One fetch RPC, counted; a NotFound after a store restart says so."""
        try:
            result = rpc(requests)
        except NotFoundError as exc:
            self._raise_if_restarted(exc)
            raise
        self.counters.fetch_rpcs += 1
        return result

    def _raise_if_restarted(self, cause: Exception) -> None:
        try:
            now = self.client.get_stats().incarnation_id
        except Exception:  # the original error is the one to report
            return
        if self._incarnation is not None and now != self._incarnation:
            raise StoreRestartedError(
                f"KV store restarted (incarnation {self._incarnation} -> {now}): this request's "
                f"clustered KV is gone"
            ) from cause

    def _pack(
        self,
        ids: torch.Tensor,
        valid: torch.Tensor,
        rows: list[tuple[int, int]],
        fetched: list,
        max_tokens: int,
    ) -> FetchedBatch:
        b, h, n = ids.shape
        keys = torch.zeros(b, h, max_tokens, self._head_dim, dtype=self._dtype)  # [B, Hkv, M, D]
        values = torch.zeros_like(keys)
        sizes = torch.zeros(b, h, n, dtype=torch.int64)  # [B, Hkv, n]
        for (i, j), got in zip(rows, fetched, strict=True):
            m = got.keys.shape[0]
            if m > max_tokens:
                raise ValueError(f"fetched {m} tokens for row ({i}, {j}), max_tokens={max_tokens}")
            keys[i, j, :m] = got.keys
            values[i, j, :m] = got.values
            sizes[i, j][valid[i, j]] = got.offsets[1:] - got.offsets[:-1]
            self.counters.fetched_bytes += 2 * got.keys.numel() * got.keys.element_size()
        offsets = torch.zeros(b, h, n + 1, dtype=torch.int64)
        offsets[..., 1:] = sizes.cumsum(-1)
        return FetchedBatch(keys=keys, values=values, offsets=offsets)

    def release(self, sequence_ids: Sequence[str]) -> None:
        if self._resolver is not None:
            self._resolver.forget(sequence_ids)
        try:
            self.flush()
        except Exception as exc:  # uploads failed; still try to delete what landed
            log.warning("pending uploads failed before release: %s", exc)
        for sid in sequence_ids:
            try:
                self.client.delete_sequence(sid)
            except NotFoundError:
                pass
            except Exception as exc:
                log.warning("could not release sequence %s in the store: %s", sid, exc)

    def close(self) -> None:
        self._uploads.shutdown(wait=True)
        if self._resolver is not None:
            self._resolver.close()
        self.client.close()


def connect_store(
    address: str | Sequence[str],
    namespace: str = "wavekv",
    token: str | None = None,
    timeout_s: float = 10.0,
    same_host: str = "auto",
) -> GrpcStoreLink:
    """A GrpcStoreLink to one store (HOST:PORT) or a sharded set of stores; `same_host`
    picks the shared-memory data plane ("auto": when the store's arena maps from here)."""
    return GrpcStoreLink(
        KVStoreClient(
            address, ClientOptions(namespace=namespace, token=token, timeout_s=timeout_s)
        ),
        same_host,
    )


def _base_tensor(cache: DescriptorCache, row_bytes: int, dtype: torch.dtype) -> torch.Tensor:
    """The arena's base address as a tensor of `dtype`: a CUDA alias (every cached slab
    registered for the GPU), or on CPU the read-only mapping itself (the interpreter reads
    through it, never writes)."""
    if torch.cuda.is_available():
        device = torch.device("cuda", torch.cuda.current_device())
        return cache.table.cuda_source(row_bytes, device).view(dtype).view(-1)
    with warnings.catch_warnings():  # not writable: the kernels only read the arena
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(cache.arena.slab(0).buf[:row_bytes]).view(dtype)


def _rows_from_table(table: HeadTable, slots: np.ndarray, head_dim: int) -> ClusterRows:
    """ClusterRows of the described heads `slots` (one per KV head): cluster c of a head starts
    at row keys_row + starts[first + c] from the base (a row is head_dim elements)."""
    cols = table._cols
    starts, lens = table._starts.values, table._lens.values
    tab_k, tab_v, size = [], [], []
    for slot in slots.tolist():
        first, n = int(cols["first"].values[slot]), int(cols["clusters"].values[slot])
        start = starts[first : first + n]
        tab_k.append((cols["keys_row"].values[slot] + start) * head_dim)
        tab_v.append((cols["values_row"].values[slot] + start) * head_dim)
        size.append(lens[first : first + n])
    width = max((len(x) for x in size), default=0)

    def padded(parts: list[np.ndarray]) -> torch.Tensor:
        out = np.zeros((len(parts), width), np.int64)
        for i, part in enumerate(parts):
            out[i, : len(part)] = part
        return torch.from_numpy(out)

    return ClusterRows(padded(tab_k), padded(tab_v), padded(size))
