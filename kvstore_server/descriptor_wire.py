"""FetchDescriptors on the wire: request entries in either form, the reply in either form.

The compact forms (`PackedFetchEntries`, `PackedDescriptors`) carry columns as raw int64 bytes,
so a call of E entries costs a handful of numpy conversions instead of E protobuf messages with
nested tensors each. The per-entry forms stay for clients that predate the compact ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kvstore_server.descriptors import DescriptorPlan
from kvstore_server.errors import InvalidArgument
from kvstore_server.fetch import FetchEntry
from wavekv_proto.codec import decode_numpy, encode_numpy, wire_dtype
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb


def request_entries(request: Any) -> list[FetchEntry]:
    """The request's entries as (sequence_id, layer, kv_head, cluster_ids [n] int64)."""
    if request.HasField("packed_entries"):
        if len(request.entries):
            raise InvalidArgument("send entries or packed_entries, not both")
        return _packed_entries(request.packed_entries)
    return [
        (e.sequence_id, e.layer, e.kv_head, _int64s(f"entries[{i}].cluster_ids", e.cluster_ids))
        for i, e in enumerate(request.entries)
    ]


def _int64s(field: str, msg: pb.Tensor) -> np.ndarray:
    try:
        arr, name = decode_numpy(msg)
    except ValueError as exc:
        raise InvalidArgument(f"{field}: {exc}") from None
    if name != "int64":
        raise InvalidArgument(f"{field}.dtype={name}, want int64")
    return arr


def _column(field: str, data: bytes) -> np.ndarray:  # [n] int64
    if len(data) % 8:
        raise InvalidArgument(f"packed_entries.{field}: {len(data)} bytes, not a multiple of 8")
    return np.frombuffer(data, np.int64)


def _packed_entries(p: Any) -> list[FetchEntry]:
    n = len(p.sequence_ids)
    counts = _column("counts", p.counts)  # [E]
    ids = _column("cluster_ids", p.cluster_ids)  # [K]
    for name, got in (("layers", len(p.layers)), ("kv_heads", len(p.kv_heads))):
        if got != n:
            raise InvalidArgument(f"packed_entries.{name}: {got} values for {n} sequence_ids")
    if counts.shape[0] != n:
        raise InvalidArgument(f"packed_entries.counts: {counts.shape[0]} values for {n} entries")
    if (counts < 0).any() or int(counts.sum()) != ids.shape[0]:
        raise InvalidArgument(
            f"packed_entries.counts sum to {int(counts.sum())} (negatives: "
            f"{int((counts < 0).sum())}), cluster_ids has {ids.shape[0]}"
        )
    bounds = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=bounds[1:])
    edges = bounds.tolist()
    columns = zip(p.sequence_ids, p.layers, p.kv_heads, strict=True)
    return [
        (sid, layer, head, ids[edges[i] : edges[i + 1]])
        for i, (sid, layer, head) in enumerate(columns)
    ]


def response(plan: DescriptorPlan, packed: bool) -> pb.FetchDescriptorsResponse:
    msg = pb.FetchDescriptorsResponse(
        arena_id=plan.arena_id, lease_id=plan.lease_id, lease_ttl_s=plan.lease_ttl_s
    )
    if packed:
        codes = np.fromiter((wire_dtype(d) for d in plan.dtypes), np.int64, len(plan.dtypes))
        table = np.concatenate([plan.table, codes[:, None]], axis=1)  # [E, 9]
        msg.packed.table = table.tobytes()
        msg.packed.counts = plan.counts.tobytes()
        msg.packed.row_starts = plan.row_starts.tobytes()
        msg.packed.lens = plan.lens.tobytes()
        return msg
    bounds = np.zeros(plan.counts.shape[0] + 1, np.int64)
    np.cumsum(plan.counts, out=bounds[1:])
    for i, row in enumerate(plan.table.tolist()):
        lens = plan.lens[bounds[i] : bounds[i + 1]]
        offsets = np.zeros(lens.shape[0] + 1, np.int64)  # [n + 1]
        np.cumsum(lens, out=offsets[1:])
        msg.entries.append(
            pb.EntryDescriptor(
                slab=row[0],
                slab_bytes=row[1],
                generation=row[2],
                extent_offset=row[3],
                keys_offset=row[4],
                values_offset=row[5],
                row_bytes=row[6],
                head_dim=row[7],
                dtype=wire_dtype(plan.dtypes[i]),
                row_starts=encode_numpy(plan.row_starts[bounds[i] : bounds[i + 1]], "int64"),
                cluster_offsets=encode_numpy(offsets, "int64"),
            )
        )
    return msg
