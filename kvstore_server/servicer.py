"""gRPC servicer: protobuf <-> store core, StoreError -> status codes, per-RPC stats."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from kvstore_server import descriptor_wire
from kvstore_server.arena import SharedArena
from kvstore_server.descriptors import plan_descriptors
from kvstore_server.errors import InvalidArgument, StoreError
from kvstore_server.fetch import BufferPool, FetchPlan, gather_progressively, plan_fetch
from kvstore_server.put_stream import SegmentAssembler
from kvstore_server.stats import RpcStats
from kvstore_server.store import Geometry, Sequence, Store
from wavekv_proto.codec import decode_numpy, dtype_name, encode_numpy, wire_dtype
from wavekv_proto.framing import encode_chunk
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb
from wavekv_proto.wavekv.v1 import kvstore_pb2_grpc as pb_grpc

log = logging.getLogger("kvstore_server.rpc")
T = TypeVar("T")
SCORING_NAMES = {pb.SCORING_GQA_SOFTMAX: "gqa_softmax", pb.SCORING_INNER_PRODUCT: "inner_product"}


class KVStoreServicer(pb_grpc.KVStoreServicer):
    def __init__(self, store: Store, stats: RpcStats, chunk_bytes: int = 1 << 20) -> None:
        self.store = store
        self.stats = stats
        self.chunk_bytes = chunk_bytes
        self._buffers = BufferPool()

    async def _unary(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        fn: Callable[[], T],
        record_ok: bool = True,
    ) -> T:
        t0, code = time.perf_counter(), "OK"
        try:
            return fn()
        except StoreError as exc:
            code = exc.code
            log.info("rejected", extra={"rpc": method, "code": code, "detail": str(exc)})
            await context.abort(grpc.StatusCode[code], str(exc))
            raise AssertionError("unreachable") from exc
        finally:
            if code != "OK" or record_ok:
                self.stats.record(method, time.perf_counter() - t0, code)

    async def CreateSequence(self, request: Any, context: Any) -> pb.CreateSequenceResponse:
        def run() -> pb.CreateSequenceResponse:
            geometry = _geometry(request.geometry)
            seq, created = self.store.create(request.namespace, request.sequence_id, geometry)
            return pb.CreateSequenceResponse(info=self._info(seq), created=created)

        return await self._unary("CreateSequence", context, run)

    async def PutSegments(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> pb.PutSegmentsResponse:
        t0, code = time.perf_counter(), "OK"
        assembler = SegmentAssembler(self.store)
        try:
            async for msg in request_iterator:
                assembler.feed(msg)
            segments = assembler.finish()
            firsts = self.store.commit(assembler.namespace, assembler.sequence_id, segments)
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
            return pb.PutSegmentsResponse(acks=acks, info=self._info(seq))
        except StoreError as exc:
            code = exc.code
            log.info("rejected", extra={"rpc": "PutSegments", "code": code, "detail": str(exc)})
            # Discard the rest of the stream before answering: aborting while the client is
            # still writing lets grpc.aio clients report INTERNAL instead of this status.
            async for _ in request_iterator:
                pass
            await context.abort(grpc.StatusCode[code], str(exc))
            raise AssertionError("unreachable") from exc
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            self.stats.record("PutSegments", time.perf_counter() - t0, code)

    async def SearchClusters(self, request: Any, context: Any) -> pb.SearchClustersResponse:
        def run() -> pb.SearchClustersResponse:
            scoring = SCORING_NAMES.get(request.scoring)
            if scoring is None:
                raise InvalidArgument(f"scoring={request.scoring} is not a known wavekv.v1.Scoring")
            entries = [
                (
                    e.sequence_id,
                    e.layer,
                    e.kv_head,
                    _array(f"entries[{i}].queries", e.queries, "float32"),
                )
                for i, e in enumerate(request.entries)
            ]
            results = self.store.search(request.namespace, entries, int(request.k), scoring)
            return pb.SearchClustersResponse(
                results=[
                    pb.SearchResult(
                        cluster_ids=encode_numpy(ids, "int64"), scores=encode_numpy(s, "float32")
                    )
                    for ids, s in results
                ]
            )

        return await self._unary("SearchClusters", context, run)

    async def FetchClusters(
        self, request: Any, context: Any
    ) -> AsyncIterator[pb.FetchClustersResponse | bytes]:
        def run() -> FetchPlan:
            entries = [
                (
                    e.sequence_id,
                    e.layer,
                    e.kv_head,
                    _array(f"entries[{i}].cluster_ids", e.cluster_ids, "int64"),
                )
                for i, e in enumerate(request.entries)
            ]
            return plan_fetch(self.store, request.namespace, entries)

        t0, code = time.perf_counter(), "CANCELLED"
        plan = await self._unary("FetchClusters", context, run, record_ok=False)
        try:
            yield pb.FetchClustersResponse(header=_fetch_header(plan))
            pooled = self._buffers.take(plan.total_bytes)
            payload = pooled[: plan.total_bytes]  # [total_bytes] uint8
            view, step, sent = payload.data, self.chunk_bytes, 0
            for ready in gather_progressively(plan, payload):  # stream while gathering the rest
                while sent < plan.total_bytes and (
                    ready - sent >= step or ready == plan.total_bytes
                ):
                    yield encode_chunk(sent, view[sent : sent + step])  # copies out (add_to_server)
                    sent += min(step, plan.total_bytes - sent)
            del view, payload
            self._buffers.give(pooled)
            code = "OK"
        finally:
            self.stats.record("FetchClusters", time.perf_counter() - t0, code)

    async def DeleteSequence(self, request: Any, context: Any) -> pb.DeleteSequenceResponse:
        def run() -> pb.DeleteSequenceResponse:
            return pb.DeleteSequenceResponse(
                bytes_freed=self.store.delete(request.namespace, request.sequence_id)
            )

        return await self._unary("DeleteSequence", context, run)

    async def GetSequence(self, request: Any, context: Any) -> pb.SequenceInfo:
        def run() -> pb.SequenceInfo:
            return self._info(self.store.get(request.namespace, request.sequence_id))

        return await self._unary("GetSequence", context, run)

    async def ListSequences(self, request: Any, context: Any) -> pb.ListSequencesResponse:
        def run() -> pb.ListSequencesResponse:
            return pb.ListSequencesResponse(
                sequences=[self._info(s) for s in self.store.list_sequences(request.namespace)]
            )

        return await self._unary("ListSequences", context, run)

    async def GetStats(self, request: Any, context: Any) -> pb.GetStatsResponse:
        def run() -> pb.GetStatsResponse:
            s = self.store
            rpcs = [
                pb.RpcStats(method=name, **m.summary())
                for name, m in sorted(self.stats.methods.items())
            ]
            return pb.GetStatsResponse(
                incarnation_id=s.incarnation_id,
                bytes_used=s.bytes_used,
                capacity_bytes=s.capacity_bytes,
                bytes_free=s.bytes_free,
                num_sequences=s.num_sequences,
                num_namespaces=s.num_namespaces,
                uptime_s=time.time() - s.started_unix_s,
                rpcs=rpcs,
            )

        return await self._unary("GetStats", context, run)

    async def GetArena(self, request: Any, context: Any) -> pb.ArenaInfo:
        def run() -> pb.ArenaInfo:
            arena = self.store.arena
            if not isinstance(arena, SharedArena):
                return pb.ArenaInfo(enabled=False)
            return pb.ArenaInfo(
                enabled=True,
                arena_id=arena.arena_id,
                directory=str(arena.directory),
                file_prefix=arena.file_prefix,
                max_lease_ttl_s=arena.max_lease_ttl_s,
            )

        return await self._unary("GetArena", context, run)

    async def FetchDescriptors(self, request: Any, context: Any) -> pb.FetchDescriptorsResponse:
        def run() -> pb.FetchDescriptorsResponse:
            plan = plan_descriptors(
                self.store,
                request.namespace,
                descriptor_wire.request_entries(request),
                request.lease_ttl_s,
                list(request.release_leases),
                request.whole_heads,
            )
            msg = descriptor_wire.response(plan, request.packed_reply)
            msg.whole_heads = request.whole_heads
            return msg

        return await self._unary("FetchDescriptors", context, run)

    async def ReleaseLeases(self, request: Any, context: Any) -> pb.ReleaseLeasesResponse:
        def run() -> pb.ReleaseLeasesResponse:
            arena = self.store.arena
            if not isinstance(arena, SharedArena):
                return pb.ReleaseLeasesResponse(released=0)
            return pb.ReleaseLeasesResponse(released=arena.release_leases(list(request.lease_ids)))

        return await self._unary("ReleaseLeases", context, run)

    def _info(self, seq: Sequence) -> pb.SequenceInfo:
        g = seq.geometry
        heads = seq.heads.values()
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
            num_tokens=sum(h.num_rows for h in heads),
            num_clusters=sum(h.num_clusters for h in heads),
            num_segments=sum(h.num_segments for h in heads),
            created_unix_s=seq.created_unix_s,
        )


def _serialize(msg: Any) -> bytes:
    """FetchClusters chunks arrive pre-serialized (wavekv_proto.framing); headers are messages."""
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def add_to_server(servicer: KVStoreServicer, server: grpc.aio.Server) -> None:
    """Register every KVStore method (as the generated helper does) with a pass-through
    serializer for FetchClusters so chunks skip protobuf."""
    service = pb.DESCRIPTOR.services_by_name["KVStore"]
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
    }
    handlers = {}
    for method in service.methods:
        response_cls = getattr(pb, method.output_type.name)
        make = kinds[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=getattr(pb, method.input_type.name).FromString,
            response_serializer=_serialize
            if method.name == "FetchClusters"
            else response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    register = getattr(server, "add_registered_method_handlers", None)  # grpcio >= 1.62
    if register is not None:
        register(service.full_name, handlers)


def _geometry(msg: pb.Geometry) -> Geometry:
    name = dtype_name(msg.dtype)
    if name is None:
        raise InvalidArgument(f"geometry.dtype={msg.dtype} is unset or unknown")
    return Geometry(msg.num_layers, msg.num_kv_heads, msg.head_dim, name)


def _array(field: str, msg: pb.Tensor, dtype: str) -> np.ndarray:
    try:
        arr, name = decode_numpy(msg)
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {exc}") from None
    if name != dtype:
        raise InvalidArgument(f"{field}.dtype={name}, want {dtype}")
    return arr


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
