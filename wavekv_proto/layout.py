"""Wire constants shared by the store and the SDK (one definition for both sides).

- Shared-memory arena layout (kvstore.proto, "Same-host zero-copy fetch"): every slab file starts
  with a SLAB_HEADER_BYTES header (SLAB_MAGIC as u64, then the arena id as ARENA_ID_BYTES ASCII
  hex bytes); every extent's data is preceded by EXTENT_HEADER_BYTES (EXTENT_MAGIC as u64, then
  its generation as u64).
- The packed FetchDescriptors table (`PackedDescriptors.table`): int64 [E, DESCRIPTOR_COLUMNS],
  columns in DESCRIPTOR_COLUMN_NAMES order (the indices below name them).
- FetchClusters payload sections start on FETCH_ALIGN-byte boundaries.
- Error trailers carry the store's incarnation id under INCARNATION_KEY.
"""

from __future__ import annotations

SLAB_MAGIC = int.from_bytes(b"WVKVSLAB", "little")
EXTENT_MAGIC = int.from_bytes(b"WVKVEXTN", "little")
SLAB_HEADER_BYTES = 4096
ARENA_ID_OFFSET = 8  # the arena id follows the magic word
ARENA_ID_BYTES = 32  # 16 random bytes as hex
EXTENT_HEADER_BYTES = 64
IDENTITY_SLAB = 0  # slab 0 holds no data: it lets a reader check it sees this store's arena

DESCRIPTOR_COLUMN_NAMES = (
    "slab",
    "slab_bytes",
    "generation",
    "extent_offset",
    "keys_offset",
    "values_offset",
    "row_bytes",
    "head_dim",
    "dtype",  # a wavekv.v1.DType value
)
SLAB, SLAB_BYTES, GENERATION, EXTENT_OFFSET, KEYS_OFFSET, VALUES_OFFSET = range(6)
ROW_BYTES, HEAD_DIM, DTYPE = 6, 7, 8
DESCRIPTOR_COLUMNS = len(DESCRIPTOR_COLUMN_NAMES)

FETCH_ALIGN = 64

INCARNATION_KEY = "wavekv-incarnation"
