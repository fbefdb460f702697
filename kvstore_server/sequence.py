"""A stored sequence: its geometry and its (layer, kv_head) head stores."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kvstore_server.arena import HeapArena, SharedArena
from kvstore_server.errors import InvalidArgument
from kvstore_server.names import echo
from kvstore_server.segments import HeadStore
from wavekv_proto.codec import KV_DTYPE_NAMES, itemsize

MAX_LAYERS = 1024
MAX_KV_HEADS = 1024
MAX_HEAD_DIM = 4096
SEQUENCE_OVERHEAD_BYTES = 1024  # charged per sequence: empty sequences are not free either


@dataclass(slots=True, frozen=True)
class Geometry:
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: str  # "float16" | "bfloat16" | "float32"

    def __post_init__(self) -> None:
        for name, value, hi in (
            ("num_layers", self.num_layers, MAX_LAYERS),
            ("num_kv_heads", self.num_kv_heads, MAX_KV_HEADS),
            ("head_dim", self.head_dim, MAX_HEAD_DIM),
        ):
            if not 1 <= value <= hi:
                raise InvalidArgument(f"geometry.{name}={value} out of range [1, {hi}]")
        if self.dtype not in KV_DTYPE_NAMES:
            raise InvalidArgument(f"geometry.dtype={self.dtype!r} is not one of {KV_DTYPE_NAMES}")

    @property
    def row_bytes(self) -> int:
        return self.head_dim * itemsize(self.dtype)


@dataclass(slots=True)
class Sequence:
    namespace: str
    sequence_id: str
    geometry: Geometry
    created_unix_s: float = field(default_factory=time.time)
    bytes_used: int = SEQUENCE_OVERHEAD_BYTES
    last_used: float = 0.0  # store clock (monotonic) of the last RPC that named it
    heads: dict[tuple[int, int], HeadStore] = field(default_factory=dict)

    def where(self, layer: int, kv_head: int) -> str:
        return f"sequence_id={echo(self.sequence_id)} layer={layer} kv_head={kv_head}"

    def check_head(self, field_prefix: str, layer: int, kv_head: int) -> None:
        g = self.geometry
        if not 0 <= layer < g.num_layers:
            raise InvalidArgument(f"{field_prefix}layer={layer} out of range [0, {g.num_layers})")
        if not 0 <= kv_head < g.num_kv_heads:
            raise InvalidArgument(
                f"{field_prefix}kv_head={kv_head} out of range [0, {g.num_kv_heads})"
            )

    def head(self, layer: int, kv_head: int) -> HeadStore | None:
        return self.heads.get((layer, kv_head))

    def head_or_new(self, layer: int, kv_head: int, arena: HeapArena | SharedArena) -> HeadStore:
        """The head store, or a new empty one NOT yet added (see `adopt`)."""
        head = self.heads.get((layer, kv_head))
        if head is None:
            head = HeadStore(self.geometry.head_dim, self.geometry.row_bytes, arena)
        return head

    def adopt(self, layer: int, kv_head: int, head: HeadStore) -> None:
        self.heads[(layer, kv_head)] = head

    def release(self) -> None:
        """Give every head's extent back (deferred in the arena while leased)."""
        for head in self.heads.values():
            head.release()

    @property
    def num_rows(self) -> int:
        return sum(h.num_rows for h in self.heads.values())

    @property
    def num_clusters(self) -> int:
        return sum(h.num_clusters for h in self.heads.values())

    @property
    def num_segments(self) -> int:
        return sum(h.num_segments for h in self.heads.values())
