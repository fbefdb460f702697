"""AsyncKVStoreClient: the asyncio SDK (one store, or several sharded by sequence id)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from client import arrays, wire
from client.errors import (
    KVStoreError,
    StaleDescriptorError,
    StoreNotReadyError,
    invalid,
)
from client.options import ClientOptions
from client.retry import call_with_retry
from client.same_host import SameHostReads
from client.shard import Shard as _Shard
from client.shard import load_cert as _load_cert
from client.sharding import HashRing
from client.tracker import SequenceTracker
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

if TYPE_CHECKING:
    from client.shm import ArenaReader

T = TypeVar("T")
log = logging.getLogger("client")


class AsyncKVStoreClient(SameHostReads):
    """Async SDK. `target` is "host:port" or a list of them (sharded by consistent hashing);
    everything else is in `options` (ClientOptions).

    Inputs are checked before any RPC (InvalidArgumentError naming the argument). Idempotent
    calls (create, search, fetch, get, list, delete, stats) are retried on UNAVAILABLE within
    the call's deadline; PutSegments (an append) is never retried. Errors raise client.errors
    types; a call naming a sequence this client created on a store that restarted and lost it
    raises StoreRestartedError. Sequences this client created are renewed in the background
    (the store drops sequences nobody touched for its TTL).
    """

    def __init__(self, target: str | Sequence[str], options: ClientOptions | None = None) -> None:
        self.options = options = options or ClientOptions()
        self._torch_out = arrays.use_torch(options.output)
        self._arena: ArenaReader | None = None
        self._arena_checked = False
        self._done_leases: list[int] = []
        self._lease_lock = threading.Lock()  # the blocking SDK touches leases from its caller
        self._tracker = SequenceTracker()
        self._renewer: asyncio.Task[None] | None = None
        targets = [target] if isinstance(target, str) else list(target)
        root = _load_cert(options.tls_root_cert)
        use_tls = options.tls if options.tls is not None else root is not None
        self._ring = HashRing(targets)
        self._shards = [
            _Shard(t, options.token, root, use_tls, options.tls_server_name) for t in targets
        ]

    @property
    def namespace(self) -> str:
        return self.options.namespace

    @property
    def timeout_s(self) -> float:
        return self.options.timeout_s

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
        sequence_ids: Sequence[str] = (),
    ) -> T:
        timeout = timeout_s or self.options.timeout_s
        try:
            return await call_with_retry(
                fn, self.options.retry, idempotent, shard.target, timeout, shard.wait_ready
            )
        except KVStoreError as err:
            raise self._tracker.restarted(err, sequence_ids) from None

    def _unary(self, shard: _Shard, method: str, request: Any) -> Callable[[float], Awaitable[Any]]:
        stub_method = getattr(shard.stub, method)
        return lambda t: stub_method(request, timeout=t, metadata=shard.metadata)

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until every target's channel is connected, at most timeout_s (default: the
        client's timeout); StoreNotReadyError (also a TimeoutError) after that."""
        timeout = self.options.timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(asyncio.gather(*(s.wait_ready() for s in self._shards)), timeout)
        except TimeoutError:
            states = ", ".join(f"{s.target} {s.state()}" for s in self._shards)
            raise StoreNotReadyError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"store not ready within timeout_s={timeout:g} (channel: {states})",
                ",".join(self.targets),
            ) from None

    async def create_sequence(
        self, sequence_id: str, geometry: SequenceGeometry, timeout_s: float | None = None
    ) -> SequenceInfo:
        """Create (or confirm, if it exists with the same geometry) a sequence."""
        shard = self._shard(sequence_id)
        req = pb.CreateSequenceRequest(
            namespace=self.namespace, sequence_id=sequence_id, geometry=wire.geometry_msg(geometry)
        )
        resp = await self._call(shard, self._unary(shard, "CreateSequence", req), True, timeout_s)
        info = wire.sequence_info(resp.info)
        self._tracker.created(info)
        self._start_renewing()
        return info

    async def put_segments(
        self, sequence_id: str, segments: list[ClusterSegment], timeout_s: float | None = None
    ) -> list[int]:
        """Append segments atomically; return the first global cluster id of each segment."""
        if not segments:
            raise invalid("segments is empty (no segments to put)")
        geometry = self._tracker.geometry(sequence_id)
        checked = [arrays.segment(f"segments[{i}]", s, geometry) for i, s in enumerate(segments)]
        shard = self._shard(sequence_id)

        async def run(t: float) -> pb.PutSegmentsResponse:
            msgs = wire.put_messages(
                self.namespace, sequence_id, checked, self.options.put_chunk_bytes
            )
            return await shard.stub.PutSegments(msgs, timeout=t, metadata=shard.metadata)

        resp = await self._call(shard, run, False, timeout_s, (sequence_id,))
        return [int(a.first_cluster_id) for a in resp.acks]

    async def search_clusters(
        self,
        queries: list[SearchQuery],
        k: int,
        scoring: str = "gqa_softmax",
        timeout_s: float | None = None,
    ) -> list[SearchResult]:
        """Top-k clusters per query group, in request order (one RPC per shard)."""
        if scoring not in wire.SCORING:
            raise invalid(f"scoring={scoring!r} is not one of {tuple(wire.SCORING)}")
        if not isinstance(k, int) or k < 1:
            raise invalid(f"k={k!r} must be an int >= 1")
        checked = [self._queries(i, q) for i, q in enumerate(queries)]

        async def one(shard: _Shard, idx: list[int]) -> list[SearchResult]:
            part = [queries[i] for i in idx]
            req = wire.search_request(self.namespace, part, [checked[i] for i in idx], k, scoring)
            ids = [q.sequence_id for q in part]
            resp = await self._call(
                shard, self._unary(shard, "SearchClusters", req), True, timeout_s, ids
            )
            return wire.search_results(resp, self._torch_out)

        return await self._fan_out([q.sequence_id for q in queries], one)

    def _queries(self, i: int, q: SearchQuery) -> Any:
        g = self._tracker.geometry(q.sequence_id)
        return arrays.floats(f"queries[{i}].queries", q.queries, (None, g.head_dim if g else None))

    async def fetch_clusters(
        self, requests: list[FetchRequest], timeout_s: float | None = None
    ) -> list[FetchedClusters]:
        """K/V of the requested clusters, in request order: ONE streaming RPC per shard, or
        (shared_memory "auto"/"require" and the store on this host) one FetchDescriptors RPC
        and a local gather from the mapped arena. Results are identical either way."""
        ids = self.check_requests(requests)
        if self.options.shared_memory != "off":
            arena = await self.shared_arena()
            if arena is not None:
                try:
                    return await self._fetch_shared(arena, requests, timeout_s)
                except StaleDescriptorError as exc:
                    if self.options.shared_memory == "require":
                        raise
                    log.warning("shared-memory fetch stale (%s); streaming instead", exc)
        return await self._fetch_streaming(requests, ids, timeout_s)

    def check_requests(self, requests: list[FetchRequest]) -> list[Any]:
        """Each request's cluster ids as int64 [n] (InvalidArgumentError before any RPC)."""
        if not requests:
            raise invalid("requests is empty")
        return arrays.request_ids(requests)

    async def _fetch_streaming(
        self, requests: list[FetchRequest], ids: list[Any], timeout_s: float | None = None
    ) -> list[FetchedClusters]:
        async def one(shard: _Shard, idx: list[int]) -> list[FetchedClusters]:
            part = [requests[i] for i in idx]
            req = wire.fetch_request(self.namespace, part, [ids[i] for i in idx])

            async def run(t: float) -> list[FetchedClusters]:
                assembler = wire.FetchAssembler(self._torch_out)
                async for msg in shard.fetch_raw(req, timeout=t, metadata=shard.metadata):
                    assembler.feed(msg)
                return assembler.results()

            names = [r.sequence_id for r in part]
            return await self._call(shard, run, True, timeout_s, names)

        return await self._fan_out([r.sequence_id for r in requests], one)

    async def _fan_out(
        self, keys: list[str], one: Callable[[_Shard, list[int]], Awaitable[list[T]]]
    ) -> list[T]:
        """Run `one(shard, item indices)` per shard concurrently; results in request order."""
        if not keys:
            raise invalid("requests is empty")
        if len(self._shards) == 1:
            return await one(self._shards[0], list(range(len(keys))))
        groups: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(self._ring.shard_of(key), []).append(i)
        parts = await asyncio.gather(*(one(self._shards[s], idx) for s, idx in groups.items()))
        out: list[Any] = [None] * len(keys)
        for idx, part in zip(groups.values(), parts, strict=True):
            for i, result in zip(idx, part, strict=True):
                out[i] = result
        return out

    async def delete_sequence(self, sequence_id: str, timeout_s: float | None = None) -> int:
        """Delete a sequence; return the bytes freed. NotFoundError if it does not exist."""
        shard = self._shard(sequence_id)
        req = pb.DeleteSequenceRequest(namespace=self.namespace, sequence_id=sequence_id)
        try:
            resp = await self._call(
                shard, self._unary(shard, "DeleteSequence", req), True, timeout_s, (sequence_id,)
            )
        finally:
            self._tracker.forget(sequence_id)
        return int(resp.bytes_freed)

    async def get_sequence(self, sequence_id: str, timeout_s: float | None = None) -> SequenceInfo:
        shard = self._shard(sequence_id)
        req = pb.GetSequenceRequest(namespace=self.namespace, sequence_id=sequence_id)
        resp = await self._call(
            shard, self._unary(shard, "GetSequence", req), True, timeout_s, (sequence_id,)
        )
        return wire.sequence_info(resp)

    async def list_sequences(self, timeout_s: float | None = None) -> list[SequenceInfo]:
        req = pb.ListSequencesRequest(namespace=self.namespace)

        async def one(shard: _Shard) -> list[SequenceInfo]:
            resp = await self._call(
                shard, self._unary(shard, "ListSequences", req), True, timeout_s
            )
            return [wire.sequence_info(s) for s in resp.sequences]

        parts = await asyncio.gather(*(one(s) for s in self._shards))
        return sorted((info for part in parts for info in part), key=lambda i: i.sequence_id)

    async def renew_sequences(
        self, sequence_ids: list[str], timeout_s: float | None = None
    ) -> list[str]:
        """Renew the store's TTL of these sequences; return the ids that no longer exist."""
        groups: dict[int, list[str]] = {}
        for sid in sequence_ids:
            groups.setdefault(self._ring.shard_of(sid), []).append(sid)

        async def one(shard: _Shard, ids: list[str]) -> list[str]:
            req = pb.RenewSequencesRequest(namespace=self.namespace, sequence_ids=ids)
            resp = await self._call(
                shard, self._unary(shard, "RenewSequences", req), True, timeout_s
            )
            return list(resp.missing)

        parts = await asyncio.gather(*(one(self._shards[s], ids) for s, ids in groups.items()))
        return [sid for part in parts for sid in part]

    def _start_renewing(self) -> None:
        if self.options.renew_sequences and self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        """Renew this client's sequences every third of the store's TTL."""
        while True:
            every = self._tracker.renew_every_s()
            await asyncio.sleep(every or 10.0)
            ids = self._tracker.renewable()
            if not ids:
                continue
            try:
                for sid in await self.renew_sequences(ids):
                    self._tracker.forget(sid)
            except KVStoreError as exc:  # the store is away; try again next period
                log.info("could not renew sequences: %s", exc)

    async def get_stats(self, timeout_s: float | None = None) -> StoreStats:
        """This namespace's statistics; in sharded mode totals over shards plus `per_target`."""
        req = pb.GetStatsRequest(namespace=self.namespace)

        async def one(shard: _Shard) -> StoreStats:
            resp = await self._call(shard, self._unary(shard, "GetStats", req), True, timeout_s)
            return wire.stats(resp)

        parts = await asyncio.gather(*(one(s) for s in self._shards))
        return wire.merge_stats(dict(zip(self.targets, parts, strict=True)))

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
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
