"""SDK dataclasses <-> wavekv.v1 messages (the only SDK module besides the transport that
touches protobuf), and the FetchClusters reassembly into one preallocated buffer. Inputs arrive
already checked and converted (client.arrays)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from client.arrays import CheckedSegment, output
from client.types import (
    FetchedClusters,
    FetchRequest,
    RpcStat,
    SearchQuery,
    SearchResult,
    SequenceGeometry,
    SequenceInfo,
    StoreStats,
)
from wavekv_proto.codec import decode_numpy, dtype_name, encode_numpy, numpy_dtype, wire_dtype
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
        msg.ttl_s,
    )


def put_messages(
    namespace: str, sequence_id: str, segments: list[CheckedSegment], chunk_bytes: int
) -> Iterator[pb.PutSegmentsRequest]:
    """Header then keys+values bytes in chunk_bytes pieces, per segment (generated lazily)."""
    for seg in segments:
        kv = wire_dtype(seg.dtype)
        header = pb.SegmentHeader(
            namespace=namespace,
            sequence_id=sequence_id,
            layer=seg.layer,
            kv_head=seg.kv_head,
            centroids=encode_numpy(seg.centroids, "float32"),
            sizes=encode_numpy(seg.sizes, "int64"),
            value_sums=encode_numpy(seg.value_sums, "float32"),
            offsets=encode_numpy(seg.offsets, "int64"),
            keys=pb.Tensor(dtype=kv, shape=seg.keys.shape),
            values=pb.Tensor(dtype=kv, shape=seg.values.shape),
        )
        yield pb.PutSegmentsRequest(header=header)
        for arr in (seg.keys, seg.values):
            raw = arr.data.cast("B") if arr.size else memoryview(b"")
            for off in range(0, len(raw), chunk_bytes):
                yield pb.PutSegmentsRequest(
                    data=pb.SegmentData(data=raw[off : off + chunk_bytes].tobytes())
                )


def search_request(
    namespace: str, queries: list[SearchQuery], checked: list[np.ndarray], k: int, scoring: str
) -> pb.SearchClustersRequest:
    entries = [
        pb.SearchEntry(
            sequence_id=q.sequence_id,
            layer=int(q.layer),
            kv_head=int(q.kv_head),
            queries=encode_numpy(arr, "float32"),
        )
        for q, arr in zip(queries, checked, strict=True)
    ]
    return pb.SearchClustersRequest(
        namespace=namespace, entries=entries, k=k, scoring=SCORING[scoring]
    )


def search_results(msg: pb.SearchClustersResponse, torch_out: bool) -> list[SearchResult]:
    out = []
    for r in msg.results:
        ids, ids_name = decode_numpy(r.cluster_ids)
        scores, scores_name = decode_numpy(r.scores)
        out.append(
            SearchResult(output(ids, ids_name, torch_out), output(scores, scores_name, torch_out))
        )
    return out


def fetch_request(
    namespace: str, requests: list[FetchRequest], ids: list[np.ndarray]
) -> pb.FetchClustersRequest:
    entries = [
        pb.FetchEntry(
            sequence_id=r.sequence_id,
            layer=int(r.layer),
            kv_head=int(r.kv_head),
            cluster_ids=encode_numpy(a, "int64"),
        )
        for r, a in zip(requests, ids, strict=True)
    ]
    return pb.FetchClustersRequest(namespace=namespace, entries=entries)


def descriptor_request(
    namespace: str,
    requests: list[FetchRequest],
    ids: list[np.ndarray],
    lease_ttl_s: float,
    release: list[int],
    whole_heads: bool = False,
) -> pb.FetchDescriptorsRequest:
    """FetchDescriptors in the compact form: entries as columns, the reply packed too
    (`whole_heads`: every cluster of each entry's head; the requests carry no ids)."""
    counts = np.fromiter((a.shape[0] for a in ids), np.int64, len(ids))  # [E]
    return pb.FetchDescriptorsRequest(
        namespace=namespace,
        lease_ttl_s=lease_ttl_s,
        release_leases=release,
        packed_reply=True,
        whole_heads=whole_heads,
        packed_entries=pb.PackedFetchEntries(
            sequence_ids=[r.sequence_id for r in requests],
            layers=[int(r.layer) for r in requests],
            kv_heads=[int(r.kv_head) for r in requests],
            counts=counts.tobytes(),
            cluster_ids=np.concatenate(ids).tobytes() if ids else b"",
        ),
    )


class FetchAssembler:
    """Copies FetchClusters chunks into one preallocated buffer; results are views into it."""

    def __init__(self, torch_out: bool = True) -> None:
        self.torch_out = torch_out
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
        out = []
        for lay in self.header.layouts:
            name = dtype_name(lay.dtype) or "float32"
            keys = self._section(lay.keys_offset, lay.num_rows, lay.head_dim, name)
            values = self._section(lay.values_offset, lay.num_rows, lay.head_dim, name)
            offsets, _ = decode_numpy(lay.cluster_offsets)
            out.append(
                FetchedClusters(
                    output(keys, name, self.torch_out),
                    output(values, name, self.torch_out),
                    output(offsets.copy(), "int64", self.torch_out),
                )
            )
        return out

    def _section(self, offset: int, rows: int, head_dim: int, name: str) -> np.ndarray:
        """[rows, head_dim] view of the buffer at `offset` (sections are 64-byte aligned)."""
        dt = numpy_dtype(name)
        nbytes = rows * head_dim * dt.itemsize
        return self.buffer[offset : offset + nbytes].view(dt).reshape(rows, head_dim)


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
        reserved_bytes=msg.reserved_bytes,
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
        sum(p.reserved_bytes for p in parts),
    )
