"""The durable journal of a persistent store (`--data-dir`): what was acknowledged, in order.

Records (kinds below) describe namespaces' arenas, created sequences, committed appends (per
head: where its rows lie in the slab files, and the new clusters' metadata) and deletions. K/V
rows themselves live in the slab files; a commit record is appended only after its rows were
written there, and the client is answered only after the record was written to the file (one
`write`), so a crash of the process (kill -9) never loses an acknowledged put. What an OS crash
or power loss may lose depends on the fsync policy (docs/store.md, "Warm restart").

Frame: u32 payload length, u32 crc32 of (kind byte + payload), u8 kind, payload. Reading stops at
the first incomplete or corrupt frame (a write torn by a crash); the file is cut back there.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ARENA, CREATE, COMMIT, DELETE, CHECKPOINT = 1, 2, 3, 4, 5
_FRAME = struct.Struct("<IIB")
_U64 = struct.Struct("<Q")
_F64 = struct.Struct("<d")


@dataclass(slots=True, frozen=True)
class ExtentRef:
    """Where a head's K/V extent lies: slab index, block (start, size), data offset, bytes."""

    slab: int
    block_start: int
    block_size: int
    data_offset: int
    nbytes: int
    generation: int


@dataclass(slots=True)
class HeadCommit:
    """One head's part of a commit: its extent after the append, and the appended clusters."""

    layer: int
    kv_head: int
    extent: ExtentRef
    num_rows: int  # rows after the append
    segments: int  # segments appended
    centroids: np.ndarray  # [c, D] float32
    value_sums: np.ndarray  # [c, D] float32
    sizes: np.ndarray  # [c] int64
    ends: np.ndarray  # [c] int64: global row offsets[1:] of the appended clusters


class Writer:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def u64(self, value: int) -> Writer:
        self.parts.append(_U64.pack(value))
        return self

    def f64(self, value: float) -> Writer:
        self.parts.append(_F64.pack(value))
        return self

    def text(self, value: str) -> Writer:
        raw = value.encode()
        self.parts.append(_U64.pack(len(raw)) + raw)
        return self

    def array(self, arr: np.ndarray) -> Writer:
        self.parts.append(np.ascontiguousarray(arr).tobytes())
        return self

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class Reader:
    def __init__(self, payload: bytes) -> None:
        self.view = memoryview(payload)
        self.pos = 0

    def u64(self) -> int:
        (value,) = _U64.unpack_from(self.view, self.pos)
        self.pos += 8
        return int(value)

    def f64(self) -> float:
        (value,) = _F64.unpack_from(self.view, self.pos)
        self.pos += 8
        return float(value)

    def text(self) -> str:
        n = self.u64()
        raw = bytes(self.view[self.pos : self.pos + n])
        self.pos += n
        return raw.decode()

    def array(self, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        count = int(np.prod(shape))
        nbytes = count * np.dtype(dtype).itemsize
        raw = self.view[self.pos : self.pos + nbytes]
        out: np.ndarray = np.frombuffer(raw, dtype, count).reshape(shape)
        self.pos += nbytes
        return out.copy()


def encode_commit(w: Writer, head: HeadCommit) -> None:
    w.u64(head.layer).u64(head.kv_head).u64(head.num_rows).u64(head.segments)
    e = head.extent
    for value in (e.slab, e.block_start, e.block_size, e.data_offset, e.nbytes, e.generation):
        w.u64(value)
    w.u64(head.sizes.shape[0])
    w.array(head.centroids).array(head.value_sums).array(head.sizes).array(head.ends)


def decode_commit(r: Reader, head_dim: int) -> HeadCommit:
    layer, kv_head, num_rows, segments = r.u64(), r.u64(), r.u64(), r.u64()
    extent = ExtentRef(*(r.u64() for _ in range(6)))
    c = r.u64()
    centroids = r.array(np.float32, (c, head_dim))
    value_sums = r.array(np.float32, (c, head_dim))
    sizes = r.array(np.int64, (c,))
    ends = r.array(np.int64, (c,))
    return HeadCommit(
        layer, kv_head, extent, num_rows, segments, centroids, value_sums, sizes, ends
    )


def frame(kind: int, payload: bytes) -> bytes:
    crc = zlib.crc32(bytes([kind]) + payload)
    return _FRAME.pack(len(payload), crc, kind) + payload


def read_records(path: Path) -> tuple[list[tuple[int, bytes, int]], int]:
    """Every complete record as (kind, payload, end offset), and the byte length they cover
    (the first torn or corrupt frame ends the read)."""
    data = path.read_bytes() if path.exists() else b""
    records: list[tuple[int, bytes, int]] = []
    pos = 0
    while pos + _FRAME.size <= len(data):
        length, crc, kind = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + length
        if end > len(data):
            break
        payload = data[pos + _FRAME.size : end]
        if zlib.crc32(bytes([kind]) + payload) != crc:
            break
        records.append((kind, payload, end))
        pos = end
    return records, pos


class Journal:
    """Append-only journal file with an fsync policy: "always" (fsync before answering),
    "everysec" (`sync` from a timer, once a second) or "no" (the OS decides)."""

    def __init__(self, path: Path, policy: str) -> None:
        self.path = path
        self.policy = policy
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.size = os.lseek(self._fd, 0, os.SEEK_END)
        self.appended = 0  # bytes since the last rewrite
        self._dirty = False

    def append(self, kind: int, payload: bytes) -> None:
        """Write one record (all of it, or none: a failed write is cut back)."""
        data = frame(kind, payload)
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self.policy == "always":
                os.fsync(self._fd)
        except BaseException:
            os.ftruncate(self._fd, self.size)
            os.lseek(self._fd, self.size, os.SEEK_SET)
            raise
        self.size += len(data)
        self.appended += len(data)
        self._dirty = self.policy != "always"

    @property
    def dirty(self) -> bool:
        """Written since the last fsync."""
        return self._dirty

    def truncate(self, size: int) -> None:
        """Cut a torn tail off (recovery, before anything is appended)."""
        os.ftruncate(self._fd, size)
        self.size = os.lseek(self._fd, size, os.SEEK_SET)

    def sync(self) -> None:
        """fsync if anything was written since the last sync (the everysec timer)."""
        if self._dirty:
            self._dirty = False
            os.fsync(self._fd)

    def rewrite(self, frames: list[bytes]) -> None:
        """Replace the journal by `frames` (compaction): temp file, fsync, rename, fsync dir."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for data in frames:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(self.path)
        fsync_dir(self.path.parent)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        self.size = os.lseek(self._fd, 0, os.SEEK_END)
        self.appended = 0
        self._dirty = False

    def close(self) -> None:
        if self._fd >= 0:
            if self.policy != "no":
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
