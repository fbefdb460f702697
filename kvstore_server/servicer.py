"""gRPC servicer: protobuf <-> store core, errors -> status codes, limits, per-namespace stats.

Every RPC validates its namespace (and, with a token file, that the call's token may name it)
before anything else. Every failure is answered with a precise status and a message naming the
field; the store's incarnation id rides in the trailing metadata of every error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from kvstore_server import descriptor_wire, edge
from kvstore_server.arena import SharedArena
from kvstore_server.auth import TokenTable
from kvstore_server.descriptors import plan_descriptors
from kvstore_server.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ResourceExhausted,
    StoreError,
    as_store_error,
)
from kvstore_server.fetch import BufferPool, FetchPlan, plan_fetch, stream_payload
from kvstore_server.names import check_name
from kvstore_server.put_stream import SegmentAssembler
from kvstore_server.stats import RpcStats
from kvstore_server.store import Store
from wavekv_proto.codec import encode_numpy, wire_dtype
from wavekv_proto.framing import encode_chunk
from wavekv_proto.layout import INCARNATION_KEY
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb
from wavekv_proto.wavekv.v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger("kvstore_server.rpc")
T = TypeVar("T")
SCORING_NAMES = {pb.SCORING_GQA_SOFTMAX: "gqa_softmax", pb.SCORING_INNER_PRODUCT: "inner_product"}
STAGE_MIN_BYTES = 4096 * 4 + 64  # a widest row (head_dim 4096, 4 bytes) plus an alignment gap


@dataclass(slots=True, frozen=True)
class ServicerConfig:
    chunk_bytes: int = 1 << 20  # FetchClusters chunk size
    max_fetch_bytes: int = 256 << 20  # largest FetchClusters payload
    max_descriptor_reply_bytes: int = 32 << 20  # largest FetchDescriptors reply
    max_put_streams: int = 64  # PutSegments streams open at once
    stream_idle_s: float = 30.0  # a put stream silent this long is dropped
    advertise_arena: bool = True  # GetArena offers the slabs (False: --shared-memory off)


class KVStoreServicer(pb_grpc.KVStoreServicer):
    def __init__(
        self,
        store: Store,
        stats: RpcStats,
        config: ServicerConfig | None = None,
        tokens: TokenTable | None = None,
    ) -> None:
        self.store = store
        self.stats = stats
        self.config = config or ServicerConfig()
        self.tokens = tokens
        self._stages = BufferPool(max(self.config.chunk_bytes, STAGE_MIN_BYTES))
        self.open_put_streams = 0

    def _admit(self, request: Any, context: Any, namespace: str | None = None) -> str:
        """Decoded request, valid namespace, token allowed to name it; the namespace."""
        edge.check_decoded(request)
        ns = request.namespace if namespace is None else namespace
        check_name("namespace", ns)
        if self.tokens is not None:
            self.tokens.authorize(context.invocation_metadata(), ns)
        return ns

    async def _abort(self, context: Any, exc: StoreError) -> None:
        trailer = ((INCARNATION_KEY, self.store.incarnation_id),)
        await context.abort(grpc.StatusCode[exc.code], str(exc), trailer)

    async def _unary(
        self,
        method: str,
        request: Any,
        context: Any,
        fn: Callable[[str], T],
        record_ok: bool = True,
    ) -> T:
        t0, code, ns = time.perf_counter(), "OK", ""
        try:
            ns = self._admit(request, context)
            return fn(ns)
        except Exception as exc:
            error = as_store_error(exc, method)
            code = error.code
            if code == "INTERNAL":
                log.exception("internal error", extra={"rpc": method})
            else:
                log.info("rejected", extra={"rpc": method, "code": code, "detail": str(error)})
        finally:
            if code != "OK" or record_ok:
                self.stats.record(ns, method, time.perf_counter() - t0, code)
        await self._abort(context, error)
        raise AssertionError("unreachable")

    async def CreateSequence(self, request: Any, context: Any) -> pb.CreateSequenceResponse:
        def run(ns: str) -> pb.CreateSequenceResponse:
            seq, created = self.store.create(
                ns, request.sequence_id, edge.geometry(request.geometry)
            )
            return pb.CreateSequenceResponse(info=self._info(seq), created=created)

        return await self._unary("CreateSequence", request, context, run)

    async def PutSegments(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> pb.PutSegmentsResponse:
        t0, code = time.perf_counter(), "CANCELLED"
        assembler = SegmentAssembler(self.store, self._admit_put(context))
        self.open_put_streams += 1
        try:
            if self.open_put_streams > self.config.max_put_streams:
                raise ResourceExhausted(
                    f"max_put_streams={self.config.max_put_streams} PutSegments streams are open"
                )
            async for msg in _idle_limited(request_iterator, self.config.stream_idle_s):
                assembler.feed(msg)
            segments = assembler.finish()
            firsts = self.store.commit(
                assembler.namespace, assembler.sequence_id, segments, assembler.reservation
            )
            seq = self.store.get(assembler.namespace, assembler.sequence_id)
            acks = [
                pb.SegmentAck(
                    layer=s.layer,
                    kv_head=s.kv_head,
                    first_cluster_id=f,
                    num_clusters=s.num_clusters,
                )
                for s, f in zip(segments, firsts, strict=True)
            ]
            code = "OK"
            return pb.PutSegmentsResponse(acks=acks, info=self._info(seq))
        except Exception as exc:
            error = as_store_error(exc, "PutSegments")
            code = error.code
            if code == "INTERNAL":
                log.exception("internal error", extra={"rpc": "PutSegments"})
            else:
                log.info(
                    "rejected", extra={"rpc": "PutSegments", "code": code, "detail": str(error)}
                )
        finally:
            assembler.release()
            self.open_put_streams -= 1
            self.stats.record(assembler.namespace, "PutSegments", time.perf_counter() - t0, code)
        if not isinstance(error, DeadlineExceeded):
            # Discard the rest of the stream before answering: aborting while the client is
            # still writing lets grpc.aio clients report INTERNAL instead of this status.
            await _drain(request_iterator, self.config.stream_idle_s)
        await self._abort(context, error)
        raise AssertionError("unreachable")

    def _admit_put(self, context: Any) -> Callable[[Any, str], object]:
        """The check the assembler runs on each message (decoded) and header (namespace)."""
        return lambda msg, ns: self._admit(msg, context, ns)

    async def SearchClusters(self, request: Any, context: Any) -> pb.SearchClustersResponse:
        def run(ns: str) -> pb.SearchClustersResponse:
            scoring = SCORING_NAMES.get(request.scoring)
            if scoring is None:
                raise InvalidArgument(f"scoring={request.scoring} is not a known wavekv.v1.Scoring")
            entries = [
                (
                    e.sequence_id,
                    e.layer,
                    e.kv_head,
                    edge.array(f"entries[{i}].queries", e.queries, "float32"),
                )
                for i, e in enumerate(request.entries)
            ]
            results = self.store.search(ns, entries, int(request.k), scoring)
            return pb.SearchClustersResponse(
                results=[
                    pb.SearchResult(
                        cluster_ids=encode_numpy(ids, "int64"), scores=encode_numpy(s, "float32")
                    )
                    for ids, s in results
                ]
            )

        return await self._unary("SearchClusters", request, context, run)

    async def FetchClusters(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.FetchClustersResponse | bytes]:
        def run(ns: str) -> FetchPlan:
            entries = [
                (
                    e.sequence_id,
                    e.layer,
                    e.kv_head,
                    edge.array(f"entries[{i}].cluster_ids", e.cluster_ids, "int64"),
                )
                for i, e in enumerate(request.entries)
            ]
            return plan_fetch(self.store, ns, entries, self.config.max_fetch_bytes)

        t0, code = time.perf_counter(), "CANCELLED"
        plan = await self._unary("FetchClusters", request, context, run, record_ok=False)
        # other RPCs run between chunks: pin what this stream reads so nothing frees it
        arena = self.store.arena(request.namespace) if plan.extents else None
        if arena is not None:
            arena.pin(plan.extents)
        stage = self._stages.take()
        try:
            yield pb.FetchClustersResponse(header=_fetch_header(plan))
            for offset, piece in stream_payload(plan, stage):
                yield encode_chunk(offset, piece.data)  # copies out: the stage is reused
            code = "OK"
        finally:
            self._stages.give(stage)
            if arena is not None:
                arena.unpin(plan.extents)
            self.stats.record(request.namespace, "FetchClusters", time.perf_counter() - t0, code)

    async def DeleteSequence(self, request: Any, context: Any) -> pb.DeleteSequenceResponse:
        def run(ns: str) -> pb.DeleteSequenceResponse:
            return pb.DeleteSequenceResponse(bytes_freed=self.store.delete(ns, request.sequence_id))

        return await self._unary("DeleteSequence", request, context, run)

    async def GetSequence(self, request: Any, context: Any) -> pb.SequenceInfo:
        def run(ns: str) -> pb.SequenceInfo:
            return self._info(self.store.get(ns, request.sequence_id))

        return await self._unary("GetSequence", request, context, run)

    async def ListSequences(self, request: Any, context: Any) -> pb.ListSequencesResponse:
        def run(ns: str) -> pb.ListSequencesResponse:
            return pb.ListSequencesResponse(
                sequences=[self._info(s) for s in self.store.list_sequences(ns)]
            )

        return await self._unary("ListSequences", request, context, run)

    async def RenewSequences(self, request: Any, context: Any) -> pb.RenewSequencesResponse:
        def run(ns: str) -> pb.RenewSequencesResponse:
            missing = self.store.renew(ns, list(request.sequence_ids))
            return pb.RenewSequencesResponse(
                missing=missing, ttl_s=self.store.config.sequence_ttl_s
            )

        return await self._unary("RenewSequences", request, context, run)

    async def GetStats(self, request: Any, context: Any) -> pb.GetStatsResponse:
        def run(ns: str) -> pb.GetStatsResponse:
            s, usage = self.store, self.store.usage(ns)
            rpcs = [
                pb.RpcStats(method=name, **m.summary())
                for name, m in sorted(self.stats.methods(ns).items())
            ]
            return pb.GetStatsResponse(
                incarnation_id=s.incarnation_id,
                bytes_used=usage.bytes_used,
                capacity_bytes=s.capacity_bytes,
                bytes_free=s.bytes_free,
                num_sequences=usage.sequences,
                num_namespaces=int(usage.sequences > 0),
                uptime_s=time.time() - s.started_unix_s,
                rpcs=rpcs,
                reserved_bytes=usage.reserved_bytes,
                namespace=ns,
            )

        return await self._unary("GetStats", request, context, run)

    async def GetArena(self, request: Any, context: Any) -> pb.ArenaInfo:
        def run(ns: str) -> pb.ArenaInfo:
            if not (self.config.advertise_arena and self.store.arenas.shared):
                return pb.ArenaInfo(enabled=False)
            arena = self.store.arena(ns)
            assert isinstance(arena, SharedArena)
            return pb.ArenaInfo(
                enabled=True,
                arena_id=arena.arena_id,
                directory=str(arena.directory),
                file_prefix=arena.file_prefix,
                max_lease_ttl_s=arena.max_lease_ttl_s,
            )

        return await self._unary("GetArena", request, context, run)

    async def FetchDescriptors(self, request: Any, context: Any) -> pb.FetchDescriptorsResponse:
        def run(ns: str) -> pb.FetchDescriptorsResponse:
            plan = plan_descriptors(
                self.store,
                ns,
                descriptor_wire.request_entries(request),
                request.lease_ttl_s,
                list(request.release_leases),
                request.whole_heads,
                self.config.max_descriptor_reply_bytes if self.config.advertise_arena else -1,
            )
            msg = descriptor_wire.response(plan, request.packed_reply)
            msg.whole_heads = request.whole_heads
            return msg

        return await self._unary("FetchDescriptors", request, context, run)

    async def ReleaseLeases(self, request: Any, context: Any) -> pb.ReleaseLeasesResponse:
        def run(ns: str) -> pb.ReleaseLeasesResponse:
            arena = self.store.arenas.find(ns)
            released = arena.release_leases(list(request.lease_ids)) if arena else 0
            return pb.ReleaseLeasesResponse(released=released)

        return await self._unary("ReleaseLeases", request, context, run)

    def _info(self, seq: Any) -> pb.SequenceInfo:
        g = seq.geometry
        return pb.SequenceInfo(
            namespace=seq.namespace,
            sequence_id=seq.sequence_id,
            geometry=pb.Geometry(
                num_layers=g.num_layers,
                num_kv_heads=g.num_kv_heads,
                head_dim=g.head_dim,
                dtype=wire_dtype(g.dtype),
            ),
            incarnation_id=self.store.incarnation_id,
            bytes_used=seq.bytes_used,
            num_tokens=seq.num_rows,
            num_clusters=seq.num_clusters,
            num_segments=seq.num_segments,
            created_unix_s=seq.created_unix_s,
            ttl_s=self.store.config.sequence_ttl_s,
        )


async def _idle_limited(stream: AsyncIterator[Any], idle_s: float) -> AsyncIterator[Any]:
    """The stream's messages; DeadlineExceeded when none arrives for idle_s seconds."""
    it = stream.__aiter__()
    while True:
        try:
            msg = await asyncio.wait_for(it.__anext__(), idle_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceeded(
                f"PutSegments stream sent nothing for stream_idle_s={idle_s:g} s"
            ) from None
        yield msg


async def _drain(stream: AsyncIterator[Any], idle_s: float) -> None:
    """Read and drop the rest of a refused stream (bounded by the idle limit)."""
    try:
        async for _ in _idle_limited(stream, idle_s):
            pass
    except (StoreError, grpc.RpcError, asyncio.CancelledError):
        pass
    except Exception as exc:  # a dead stream: nothing more to read
        log.debug("stream ended while draining: %s", exc)


def _fetch_header(plan: FetchPlan) -> pb.FetchHeader:
    layouts = [
        pb.FetchLayout(
            dtype=wire_dtype(lay.dtype),
            head_dim=lay.head_dim,
            num_rows=lay.num_rows,
            keys_offset=lay.keys_offset,
            values_offset=lay.values_offset,
            cluster_offsets=encode_numpy(lay.cluster_offsets, "int64"),
        )
        for lay in plan.layouts
    ]
    return pb.FetchHeader(layouts=layouts, total_bytes=plan.total_bytes)
