"""AsyncKVStoreClient: the asyncio SDK (one store, or several sharded by sequence id)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from client import wire
from client.retry import RetryPolicy, call_with_retry
from client.shard import Shard as _Shard
from client.shard import load_cert as _load_cert
from client.sharding import HashRing
from client.shm import (
    ArenaReader,
    DescriptorBatch,
    SharedMemoryUnavailable,
    StaleDescriptorError,
)
from client.types import (
    ClusterSegment,
    FetchedClusters,
    FetchRequest,
    SearchQuery,
    SearchResult,
    SequenceGeometry,
    SequenceInfo,
    StoreStats,
)
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

T = TypeVar("T")
log = logging.getLogger("client")
SHM_MODES = ("off", "auto", "require")
PUT_CHUNK_BYTES = 1 << 20


class AsyncKVStoreClient:
    """Async SDK. `target` is "host:port" or a list of them (sharded by consistent hashing).

    Idempotent calls (create, search, fetch, get, list, delete, stats) are retried with backoff
    on UNAVAILABLE; PutSegments (an append) is never retried. Errors raise client.errors types.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        namespace: str = "default",
        token: str | None = None,
        tls_root_cert: bytes | str | Path | None = None,
        *,
        tls: bool | None = None,
        tls_server_name: str | None = None,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        put_chunk_bytes: int = PUT_CHUNK_BYTES,
        shared_memory: str = "off",
        lease_ttl_s: float = 10.0,
    ) -> None:
        if shared_memory not in SHM_MODES:
            raise ValueError(f"shared_memory={shared_memory!r} is not one of {SHM_MODES}")
        self.shared_memory = shared_memory
        self.lease_ttl_s = lease_ttl_s
        self._arena: ArenaReader | None = None
        self._arena_checked = False
        self._done_leases: list[int] = []
        self._lease_lock = threading.Lock()  # the blocking SDK touches leases from its caller
        targets = [target] if isinstance(target, str) else list(target)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0")
        root = _load_cert(tls_root_cert)
        use_tls = tls if tls is not None else root is not None
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.put_chunk_bytes = put_chunk_bytes
        self._ring = HashRing(targets)
        self._shards = [_Shard(t, token, root, use_tls, tls_server_name) for t in targets]

    @property
    def targets(self) -> list[str]:
        return self._ring.targets

    def _shard(self, sequence_id: str) -> _Shard:
        return self._shards[self._ring.shard_of(sequence_id)]

    async def _call(
        self,
        shard: _Shard,
        fn: Callable[[float], Awaitable[T]],
        idempotent: bool,
        timeout_s: float | None,
    ) -> T:
        timeout = timeout_s or self.timeout_s
        return await call_with_retry(lambda: fn(timeout), self.retry, idempotent, shard.target)

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until every target's channel is connected (no sleeping)."""
        await asyncio.wait_for(
            asyncio.gather(*(s.channel.channel_ready() for s in self._shards)), timeout_s
        )

    async def create_sequence(
        self, sequence_id: str, geometry: SequenceGeometry, timeout_s: float | None = None
    ) -> SequenceInfo:
        """Create (or confirm, if it exists with the same geometry) a sequence."""
        shard = self._shard(sequence_id)
        req = pb.CreateSequenceRequest(
            namespace=self.namespace, sequence_id=sequence_id, geometry=wire.geometry_msg(geometry)
        )
        resp = await self._call(
            shard,
            lambda t: shard.stub.CreateSequence(req, timeout=t, metadata=shard.metadata),
            True,
            timeout_s,
        )
        return wire.sequence_info(resp.info)

    async def put_segments(
        self, sequence_id: str, segments: list[ClusterSegment], timeout_s: float | None = None
    ) -> list[int]:
        """Append segments atomically; return the first global cluster id of each segment."""
        shard = self._shard(sequence_id)

        async def run(t: float) -> pb.PutSegmentsResponse:
            msgs = wire.put_messages(self.namespace, sequence_id, segments, self.put_chunk_bytes)
            return await shard.stub.PutSegments(msgs, timeout=t, metadata=shard.metadata)

        resp = await self._call(shard, run, False, timeout_s)
        return [int(a.first_cluster_id) for a in resp.acks]

    async def search_clusters(
        self,
        queries: list[SearchQuery],
        k: int,
        scoring: str = "gqa_softmax",
        timeout_s: float | None = None,
    ) -> list[SearchResult]:
        """Top-k clusters per query group, in request order (one RPC per shard)."""

        async def one(shard: _Shard, part: list[SearchQuery]) -> list[SearchResult]:
            req = wire.search_request(self.namespace, part, k, scoring)
            resp = await self._call(
                shard,
                lambda t: shard.stub.SearchClusters(req, timeout=t, metadata=shard.metadata),
                True,
                timeout_s,
            )
            return wire.search_results(resp)

        return await self._fan_out([q.sequence_id for q in queries], queries, one)

    async def fetch_clusters(
        self, requests: list[FetchRequest], timeout_s: float | None = None
    ) -> list[FetchedClusters]:
        """K/V of the requested clusters, in request order: ONE streaming RPC per shard, or
        (shared_memory="auto"/"require" and the store on this host) one FetchDescriptors RPC
        and a local gather from the mapped arena. Results are identical either way."""
        if self.shared_memory != "off":
            arena = await self.shared_arena()
            if arena is not None:
                try:
                    return await self._fetch_shared(arena, requests, timeout_s)
                except StaleDescriptorError as exc:
                    if self.shared_memory == "require":
                        raise
                    log.warning("shared-memory fetch stale (%s); streaming instead", exc)
        return await self._fetch_streaming(requests, timeout_s)

    async def _fetch_shared(
        self, arena: ArenaReader, requests: list[FetchRequest], timeout_s: float | None
    ) -> list[FetchedClusters]:
        batch = await self.fetch_descriptors(requests, timeout_s=timeout_s)
        out = []
        for d in batch.entries:
            keys, values = arena.gather_cpu(d)
            out.append(FetchedClusters(keys, values, torch.from_numpy(d.cluster_offsets.copy())))
        arena.verify(batch)
        self.done_with_lease(batch.lease_id)
        return out

    async def shared_arena(self) -> ArenaReader | None:
        """The mapped arena of a same-host single store, or None (remote, sharded, shm off).
        shared_memory="require" raises SharedMemoryUnavailable instead of returning None."""
        if not self._arena_checked:
            self._arena_checked = True
            try:
                if len(self._shards) != 1:
                    raise SharedMemoryUnavailable("sharded clients stream (one arena per store)")
                shard = self._shards[0]
                info = await self._call(
                    shard,
                    lambda t: shard.stub.GetArena(
                        pb.GetArenaRequest(), timeout=t, metadata=shard.metadata
                    ),
                    True,
                    None,
                )
                self._arena = ArenaReader(info)
            except SharedMemoryUnavailable as exc:
                log.info("shared memory not used: %s", exc)
                self._arena = None
                if self.shared_memory == "require":
                    raise
        return self._arena

    async def fetch_descriptors(
        self,
        requests: list[FetchRequest],
        lease_ttl_s: float | None = None,
        timeout_s: float | None = None,
    ) -> DescriptorBatch:
        """Where the requested clusters lie in the mapped arena, under a new lease. Leases
        handed to `done_with_lease` are released by this call (no extra RPC)."""
        arena = await self.shared_arena()
        if arena is None:
            raise SharedMemoryUnavailable("no shared arena for this client")
        if not requests:
            raise ValueError("requests is empty")
        shard = self._shards[0]
        req = self.descriptor_request(requests, lease_ttl_s)
        resp = await self._call(
            shard,
            lambda t: shard.stub.FetchDescriptors(req, timeout=t, metadata=shard.metadata),
            True,
            timeout_s,
        )
        return arena.decode(resp)

    def descriptor_request(
        self, requests: list[FetchRequest], lease_ttl_s: float | None, whole_heads: bool = False
    ) -> pb.FetchDescriptorsRequest:
        """The compact FetchDescriptors request, carrying the finished leases to release."""
        if not requests:
            raise ValueError("requests is empty")
        ttl = self.lease_ttl_s if lease_ttl_s is None else lease_ttl_s
        with self._lease_lock:
            release, self._done_leases = self._done_leases, []
        return wire.descriptor_request(self.namespace, requests, ttl, release, whole_heads)

    def done_with_lease(self, lease_id: int) -> None:
        """Mark a lease finished; it is released with the next FetchDescriptors call.
        Thread-safe (the blocking SDK calls it from its caller's thread)."""
        with self._lease_lock:
            self._done_leases.append(lease_id)

    async def release_leases(self, timeout_s: float | None = None) -> int:
        """Release finished leases now (otherwise the next FetchDescriptors does it)."""
        if not self._done_leases or len(self._shards) != 1:
            return 0
        shard = self._shards[0]
        with self._lease_lock:
            req = pb.ReleaseLeasesRequest(lease_ids=self._done_leases)
            self._done_leases = []
        resp = await self._call(
            shard,
            lambda t: shard.stub.ReleaseLeases(req, timeout=t, metadata=shard.metadata),
            True,
            timeout_s,
        )
        return int(resp.released)

    async def _fetch_streaming(
        self, requests: list[FetchRequest], timeout_s: float | None = None
    ) -> list[FetchedClusters]:

        async def one(shard: _Shard, part: list[FetchRequest]) -> list[FetchedClusters]:
            req = wire.fetch_request(self.namespace, part)

            async def run(t: float) -> list[FetchedClusters]:
                assembler = wire.FetchAssembler()
                async for msg in shard.fetch_raw(req, timeout=t, metadata=shard.metadata):
                    assembler.feed(msg)
                return assembler.results()

            return await self._call(shard, run, True, timeout_s)

        return await self._fan_out([r.sequence_id for r in requests], requests, one)

    async def _fan_out(
        self,
        keys: list[str],
        items: list[Any],
        one: Callable[[_Shard, list[Any]], Awaitable[list[T]]],
    ) -> list[T]:
        if not items:
            raise ValueError("requests is empty")
        if len(self._shards) == 1:
            return await one(self._shards[0], items)
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self._ring.shard_of(key), []).append(i)
        parts = await asyncio.gather(
            *(one(self._shards[s], [items[i] for i in idx]) for s, idx in groups.items())
        )
        out: list[Any] = [None] * len(items)
        for idx, part in zip(groups.values(), parts, strict=True):
            for i, result in zip(idx, part, strict=True):
                out[i] = result
        return out

    async def delete_sequence(self, sequence_id: str, timeout_s: float | None = None) -> int:
        """Delete a sequence; return the bytes freed. NotFoundError if it does not exist."""
        shard = self._shard(sequence_id)
        req = pb.DeleteSequenceRequest(namespace=self.namespace, sequence_id=sequence_id)
        resp = await self._call(
            shard,
            lambda t: shard.stub.DeleteSequence(req, timeout=t, metadata=shard.metadata),
            True,
            timeout_s,
        )
        return int(resp.bytes_freed)

    async def get_sequence(self, sequence_id: str, timeout_s: float | None = None) -> SequenceInfo:
        shard = self._shard(sequence_id)
        req = pb.GetSequenceRequest(namespace=self.namespace, sequence_id=sequence_id)
        resp = await self._call(
            shard,
            lambda t: shard.stub.GetSequence(req, timeout=t, metadata=shard.metadata),
            True,
            timeout_s,
        )
        return wire.sequence_info(resp)

    async def list_sequences(self, timeout_s: float | None = None) -> list[SequenceInfo]:
        req = pb.ListSequencesRequest(namespace=self.namespace)

        async def one(shard: _Shard) -> list[SequenceInfo]:
            resp = await self._call(
                shard,
                lambda t: shard.stub.ListSequences(req, timeout=t, metadata=shard.metadata),
                True,
                timeout_s,
            )
            return [wire.sequence_info(s) for s in resp.sequences]

        parts = await asyncio.gather(*(one(s) for s in self._shards))
        return sorted((info for part in parts for info in part), key=lambda i: i.sequence_id)

    async def get_stats(self, timeout_s: float | None = None) -> StoreStats:
        """Store statistics; in sharded mode totals over shards plus `per_target`."""

        async def one(shard: _Shard) -> StoreStats:
            resp = await self._call(
                shard,
                lambda t: shard.stub.GetStats(
                    pb.GetStatsRequest(), timeout=t, metadata=shard.metadata
                ),
                True,
                timeout_s,
            )
            return wire.stats(resp)

        parts = await asyncio.gather(*(one(s) for s in self._shards))
        return wire.merge_stats(dict(zip(self.targets, parts, strict=True)))

    async def close(self) -> None:
        try:
            await self.release_leases(timeout_s=2.0)
        except Exception as exc:  # leases expire on their own
            log.debug("could not release leases at close: %s", exc)
        for shard in self._shards:
            shard.close_sync()
        await asyncio.gather(*(s.channel.close(None) for s in self._shards))

    async def __aenter__(self) -> AsyncKVStoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
