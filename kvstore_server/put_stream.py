"""Assemble a PutSegments client stream into validated Segments (servicer edge: touches protobuf).

Each segment is a SegmentHeader followed by its key bytes then value bytes over any number of
SegmentData messages. Capacity is reserved at each header, before its data is accepted (so bytes
in flight count against the budget); bytes go straight into the segment's final buffers (one
copy). Nothing reaches the store until the stream ended with every segment complete; the
reservation is released whatever happens (`release`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvstore_server.edge import Undecodable
from kvstore_server.errors import InvalidArgument, ResourceExhausted
from kvstore_server.names import echo
from kvstore_server.segments import Segment, check_metadata
from kvstore_server.store import Reservation, Store
from wavekv_proto.codec import decode_numpy, dtype_name
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb


@dataclass(slots=True)
class _Pending:
    segment: Segment
    payload: np.ndarray  # [2 * N * row_bytes] uint8: keys then values (segment.keys/values view it)
    received: int = 0


class SegmentAssembler:
    """`admit(message, namespace)` checks each message (decoded, namespace and token allowed)."""

    def __init__(self, store: Store, admit: Callable[[Any, str], object]) -> None:
        self._store = store
        self._admit = admit
        self.namespace = ""
        self.sequence_id = ""
        self.segments: list[Segment] = []
        self.reservation: Reservation = store.reservation("")
        self._current: _Pending | None = None
        self._messages = 0

    def release(self) -> None:
        """Give back the capacity reserved for segments that were not committed."""
        self.reservation.release()

    def feed(self, msg: pb.PutSegmentsRequest | Undecodable) -> None:
        self._messages += 1
        if isinstance(msg, Undecodable):
            raise msg.error(f"PutSegments message {self._messages}")
        kind = msg.WhichOneof("kind")
        if kind == "header":
            self._close_current()
            self._open(msg.header)
        elif kind == "data":
            self._append(msg.data.data)
        else:
            raise InvalidArgument("PutSegmentsRequest.kind is unset (want header or data)")

    def finish(self) -> list[Segment]:
        self._close_current()
        if not self.segments:
            raise InvalidArgument("PutSegments stream carried no segments (empty payload)")
        return self.segments

    def _where(self, header: pb.SegmentHeader) -> str:
        return f"segments[{len(self.segments)}] (layer={header.layer} kv_head={header.kv_head})"

    def _open(self, h: pb.SegmentHeader) -> None:
        if not self.segments and self._current is None:
            self._admit(h, h.namespace)
            self.namespace, self.sequence_id = h.namespace, h.sequence_id
            self.reservation = self._store.reservation(h.namespace)
        elif (h.namespace, h.sequence_id) != (self.namespace, self.sequence_id):
            raise InvalidArgument(
                f"header.sequence_id={echo(h.sequence_id)} namespace={echo(h.namespace)} differs "
                f"from the stream's first ({echo(self.sequence_id)}, {echo(self.namespace)})"
            )
        seq = self._store.get(h.namespace, h.sequence_id)
        where = self._where(h)
        seq.check_head(f"{where}: ", h.layer, h.kv_head)
        g = seq.geometry
        centroids = _tensor(where, "centroids", h.centroids, ("float32",))
        sizes = _tensor(where, "sizes", h.sizes, ("int64", "int32")).astype(np.int64)
        value_sums = _tensor(where, "value_sums", h.value_sums, ("float32",))
        offsets = _tensor(where, "offsets", h.offsets, ("int64",))
        num_rows = _kv_rows(where, h, g.head_dim, g.dtype)
        check_metadata(where, centroids, sizes, value_sums, offsets, g.head_dim, num_rows)
        payload_bytes = 2 * num_rows * g.row_bytes
        meta_bytes = centroids.nbytes + sizes.nbytes + value_sums.nbytes + offsets.nbytes
        self.reservation.grow(meta_bytes + payload_bytes, f"PutSegments {where}")
        try:
            payload = np.empty(payload_bytes, np.uint8)
        except (MemoryError, ValueError):
            raise ResourceExhausted(
                f"PutSegments {where}: cannot allocate {payload_bytes} bytes for keys+values"
            ) from None
        kv = payload.reshape(2, num_rows, g.row_bytes)
        seg = Segment(h.layer, h.kv_head, centroids, sizes, value_sums, offsets, kv[0], kv[1])
        self._current = _Pending(seg, payload)

    def _append(self, data: bytes) -> None:
        cur = self._current
        if cur is None:
            raise InvalidArgument("SegmentData received before any SegmentHeader")
        end = cur.received + len(data)
        if end > cur.payload.shape[0]:
            raise InvalidArgument(
                f"segments[{len(self.segments)}]: data overflows the header's keys+values size "
                f"({end} > {cur.payload.shape[0]} bytes)"
            )
        cur.payload[cur.received : end] = np.frombuffer(data, np.uint8)
        cur.received = end

    def _close_current(self) -> None:
        cur = self._current
        if cur is None:
            return
        if cur.received != cur.payload.shape[0]:
            seg = cur.segment
            raise InvalidArgument(
                f"segments[{len(self.segments)}] (layer={seg.layer} kv_head={seg.kv_head}) "
                f"truncated: "
                f"received {cur.received} of {cur.payload.shape[0]} keys+values bytes"
            )
        self.segments.append(cur.segment)
        self._current = None


def _tensor(where: str, name: str, msg: pb.Tensor, dtypes: tuple[str, ...]) -> np.ndarray:
    try:
        arr, dt = decode_numpy(msg)
    except ValueError as exc:
        raise InvalidArgument(f"{where}: {name}: {exc}") from None
    if dt not in dtypes:
        raise InvalidArgument(f"{where}: {name}.dtype={dt} is not one of {dtypes}")
    return arr


def _kv_rows(where: str, h: pb.SegmentHeader, head_dim: int, dtype: str) -> int:
    shapes = []
    for name, t in (("keys", h.keys), ("values", h.values)):
        dt = dtype_name(t.dtype)
        if dt != dtype:
            raise InvalidArgument(
                f"{where}: {name}.dtype={dt} does not match geometry.dtype={dtype}"
            )
        if len(t.shape) != 2 or t.shape[1] != head_dim or t.shape[0] < 0:
            raise InvalidArgument(f"{where}: {name} shape={list(t.shape)}, want [N, {head_dim}]")
        if t.data:
            raise InvalidArgument(
                f"{where}: {name}.data must be empty in a header (send SegmentData)"
            )
        shapes.append(tuple(t.shape))
    if shapes[0] != shapes[1]:
        raise InvalidArgument(
            f"{where}: values shape={list(shapes[1])} != keys shape={list(shapes[0])}"
        )
    return int(shapes[0][0])
