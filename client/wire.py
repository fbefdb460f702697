"""SDK dataclasses <-> wavekv.v1 messages (the only SDK module besides the transport that
touches protobuf), and the FetchClusters reassembly into one preallocated buffer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from client.types import (
    ClusterSegment,
    FetchedClusters,
    FetchRequest,
    RpcStat,
    SearchQuery,
    SearchResult,
    SequenceGeometry,
    SequenceInfo,
    StoreStats,
)
from wavekv_proto.codec import (
    decode_torch,
    dtype_name,
    encode,
    encode_numpy,
    to_numpy,
    torch_dtype,
    wire_dtype,
)
from wavekv_proto.framing import decode_response
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

SCORING = {"gqa_softmax": pb.SCORING_GQA_SOFTMAX, "inner_product": pb.SCORING_INNER_PRODUCT}


def geometry_msg(g: SequenceGeometry) -> pb.Geometry:
    return pb.Geometry(
        num_layers=g.num_layers,
        num_kv_heads=g.num_kv_heads,
        head_dim=g.head_dim,
        dtype=wire_dtype(g.dtype),
    )


def sequence_info(msg: pb.SequenceInfo) -> SequenceInfo:
    g = msg.geometry
    geometry = SequenceGeometry(
        g.num_layers, g.num_kv_heads, g.head_dim, dtype_name(g.dtype) or "float32"
    )
    return SequenceInfo(
        msg.namespace,
        msg.sequence_id,
        geometry,
        msg.incarnation_id,
        msg.bytes_used,
        msg.num_tokens,
        msg.num_clusters,
        msg.num_segments,
        msg.created_unix_s,
    )


def put_messages(
    namespace: str, sequence_id: str, segments: list[ClusterSegment], chunk_bytes: int
) -> Iterator[pb.PutSegmentsRequest]:
    """Header then keys+values bytes in chunk_bytes pieces, per segment (generated lazily)."""
    for seg in segments:
        keys, _ = to_numpy(seg.keys)  # [N, D]
        values, _ = to_numpy(seg.values)  # [N, D]
        header = pb.SegmentHeader(
            namespace=namespace,
            sequence_id=sequence_id,
            layer=seg.layer,
            kv_head=seg.kv_head,
            centroids=encode(_as(seg.centroids, np.float32)),
            sizes=encode(_as(seg.sizes, np.int64)),
            value_sums=encode(_as(seg.value_sums, np.float32)),
            offsets=encode(_as(seg.offsets, np.int64)),
            keys=encode(keys, with_data=False),
            values=encode(values, with_data=False),
        )
        yield pb.PutSegmentsRequest(header=header)
        for arr in (keys, values):
            raw = arr.data.cast("B") if arr.size else memoryview(b"")
            for off in range(0, len(raw), chunk_bytes):
                yield pb.PutSegmentsRequest(
                    data=pb.SegmentData(data=raw[off : off + chunk_bytes].tobytes())
                )


def _as(x: Any, dtype: type) -> np.ndarray:
    """numpy/torch -> numpy of `dtype` (no copy when it already matches)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.float()
        x = x.numpy()
    return np.ascontiguousarray(np.asarray(x), dtype=dtype)


def search_request(
    namespace: str, queries: list[SearchQuery], k: int, scoring: str
) -> pb.SearchClustersRequest:
    if scoring not in SCORING:
        raise ValueError(f"scoring={scoring!r} is not one of {tuple(SCORING)}")
    entries = [
        pb.SearchEntry(
            sequence_id=q.sequence_id,
            layer=q.layer,
            kv_head=q.kv_head,
            queries=encode_numpy(_as(q.queries, np.float32), "float32"),
        )
        for q in queries
    ]
    return pb.SearchClustersRequest(
        namespace=namespace, entries=entries, k=k, scoring=SCORING[scoring]
    )


def search_results(msg: pb.SearchClustersResponse) -> list[SearchResult]:
    return [SearchResult(decode_torch(r.cluster_ids), decode_torch(r.scores)) for r in msg.results]


def fetch_request(namespace: str, requests: list[FetchRequest]) -> pb.FetchClustersRequest:
    entries = [
        pb.FetchEntry(
            sequence_id=r.sequence_id,
            layer=r.layer,
            kv_head=r.kv_head,
            cluster_ids=encode_numpy(_as(r.cluster_ids, np.int64).reshape(-1), "int64"),
        )
        for r in requests
    ]
    return pb.FetchClustersRequest(namespace=namespace, entries=entries)


def descriptor_request(
    namespace: str,
    requests: list[FetchRequest],
    lease_ttl_s: float,
    release: list[int],
    whole_heads: bool = False,
) -> pb.FetchDescriptorsRequest:
    """FetchDescriptors in the compact form: entries as columns, the reply packed too
    (`whole_heads`: every cluster of each entry's head; the requests carry no ids)."""
    ids = [_as(r.cluster_ids, np.int64).reshape(-1) for r in requests]
    counts = np.fromiter((a.shape[0] for a in ids), np.int64, len(ids))  # [E]
    return pb.FetchDescriptorsRequest(
        namespace=namespace,
        lease_ttl_s=lease_ttl_s,
        release_leases=release,
        packed_reply=True,
        whole_heads=whole_heads,
        packed_entries=pb.PackedFetchEntries(
            sequence_ids=[r.sequence_id for r in requests],
            layers=[r.layer for r in requests],
            kv_heads=[r.kv_head for r in requests],
            counts=counts.tobytes(),
            cluster_ids=np.concatenate(ids).tobytes() if ids else b"",
        ),
    )


class FetchAssembler:
    """Copies FetchClusters chunks into one preallocated buffer; results are views into it."""

    def __init__(self) -> None:
        self.header: pb.FetchHeader | None = None
        self.buffer = np.empty(0, np.uint8)
        self._view = self.buffer.data
        self._received = 0

    def feed(self, raw: bytes) -> None:
        """One serialized FetchClustersResponse (the stub hands over raw bytes)."""
        msg = decode_response(raw)
        if isinstance(msg, pb.FetchClustersResponse):
            if msg.WhichOneof("kind") == "header":
                self._start(msg.header)
                return
            offset, data = msg.chunk.offset, memoryview(msg.chunk.data)
        else:
            offset, data = msg
        if self.header is None or offset != self._received:
            raise ValueError(f"FetchClusters chunk at offset {offset}, expected {self._received}")
        end = offset + len(data)
        if end > self.header.total_bytes:
            raise ValueError(
                f"FetchClusters chunk ends at {end} > total_bytes={self.header.total_bytes}"
            )
        self._view[offset:end] = data
        self._received = end

    def _start(self, header: pb.FetchHeader) -> None:
        self.header = header
        self.buffer = np.empty(header.total_bytes, np.uint8)  # [total_bytes]
        self._view = self.buffer.data

    def results(self) -> list[FetchedClusters]:
        if self.header is None or self._received != self.header.total_bytes:
            total = self.header.total_bytes if self.header else "?"
            raise ValueError(f"FetchClusters stream ended after {self._received} of {total} bytes")
        payload = torch.from_numpy(self.buffer)  # [total_bytes] uint8, shared by every result
        typed: dict[int, torch.Tensor] = {}  # payload viewed per dtype (sections are 64-B aligned)
        out = []
        for lay in self.header.layouts:
            view = typed.get(lay.dtype)
            if view is None:
                view = typed[lay.dtype] = payload.view(
                    torch_dtype(dtype_name(lay.dtype) or "float32")
                )
            out.append(self._entry(view, lay))
        return out

    @staticmethod
    def _entry(typed: torch.Tensor, lay: pb.FetchLayout) -> FetchedClusters:
        shape, strides, size = (lay.num_rows, lay.head_dim), (lay.head_dim, 1), typed.element_size()
        keys = typed.as_strided(shape, strides, lay.keys_offset // size)  # [M, D] view
        values = typed.as_strided(shape, strides, lay.values_offset // size)  # [M, D] view
        offsets = torch.frombuffer(bytearray(lay.cluster_offsets.data), dtype=torch.int64)
        return FetchedClusters(keys, values, offsets)


def stats(msg: pb.GetStatsResponse) -> StoreStats:
    rpcs = {
        r.method: RpcStat(r.count, r.errors, r.mean_ms, r.p50_ms, r.p99_ms, r.max_ms)
        for r in msg.rpcs
    }
    return StoreStats(
        msg.incarnation_id,
        msg.bytes_used,
        msg.capacity_bytes,
        msg.bytes_free,
        msg.num_sequences,
        msg.num_namespaces,
        msg.uptime_s,
        rpcs,
    )


def merge_stats(per_target: dict[str, StoreStats]) -> StoreStats:
    """Totals over shards; per-method counts summed, latencies conservative (max over shards)."""
    parts = list(per_target.values())
    if len(parts) == 1:
        return parts[0]
    rpcs: dict[str, RpcStat] = {}
    for p in parts:
        for name, r in p.rpcs.items():
            m = rpcs.get(name)
            if m is None:
                rpcs[name] = RpcStat(r.count, r.errors, r.mean_ms, r.p50_ms, r.p99_ms, r.max_ms)
                continue
            total = m.count + r.count
            m.mean_ms = (m.mean_ms * m.count + r.mean_ms * r.count) / max(total, 1)
            m.count, m.errors = total, m.errors + r.errors
            m.p50_ms, m.p99_ms, m.max_ms = (
                max(m.p50_ms, r.p50_ms),
                max(m.p99_ms, r.p99_ms),
                max(m.max_ms, r.max_ms),
            )
    return StoreStats(
        ",".join(p.incarnation_id for p in parts),
        sum(p.bytes_used for p in parts),
        sum(p.capacity_bytes for p in parts),
        sum(p.bytes_free for p in parts),
        sum(p.num_sequences for p in parts),
        max(p.num_namespaces for p in parts),
        min(p.uptime_s for p in parts),
        rpcs,
        dict(per_target),
    )
