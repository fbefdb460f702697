"""Wire-format fast path for FetchClusters chunks (shared by the store and the SDK).

A chunk message is `FetchClustersResponse{chunk: FetchChunk{offset, data}}`. Building it through
protobuf costs three payload copies on the server (bytes slice, field set, serialize) and two on
the client (parse, `.data`). Here the server frames a chunk with one copy straight from its gather
buffer and the client copies the data straight from the received bytes into its preallocated
buffer. The bytes are exactly what protobuf would produce/accept (tests compare against it);
header messages still go through protobuf.
"""

from __future__ import annotations

from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

_CHUNK_TAG = b"\x12"  # FetchClustersResponse.chunk: field 2, wire type 2 (length-delimited)
_OFFSET_TAG = b"\x08"  # FetchChunk.offset: field 1, varint
_DATA_TAG = b"\x12"  # FetchChunk.data: field 2, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def encode_chunk(offset: int, data: memoryview) -> bytes:
    """Serialized FetchClustersResponse(chunk=FetchChunk(offset, data)) in one copy of data."""
    inner_head = _OFFSET_TAG + _varint(offset) if offset else b""  # proto3 omits default values
    if len(data):
        inner_head += _DATA_TAG + _varint(len(data))
    inner_len = len(inner_head) + len(data)
    return b"".join((_CHUNK_TAG, _varint(inner_len), inner_head, data))


def decode_response(raw: bytes) -> tuple[int, memoryview] | pb.FetchClustersResponse:
    """Chunk messages -> (offset, data view into raw); anything else -> parsed protobuf message."""
    view = memoryview(raw)
    if not raw or raw[0:1] != _CHUNK_TAG:
        return pb.FetchClustersResponse.FromString(raw)
    inner_len, pos = _read_varint(view, 1)
    end = pos + inner_len
    offset, data = 0, view[0:0]
    while pos < end:  # FetchChunk fields in any order, as protobuf allows
        tag = view[pos]
        if tag == 0x08:
            offset, pos = _read_varint(view, pos + 1)
        elif tag == 0x12:
            n, pos = _read_varint(view, pos + 1)
            data, pos = view[pos : pos + n], pos + n
        else:
            return pb.FetchClustersResponse.FromString(raw)
    if end != len(raw):
        return pb.FetchClustersResponse.FromString(raw)
    return offset, data
