"""Persistence of a store with `--data-dir`: the journal writer, checkpoints and compaction.

DATA_DIR/store.json names the store (store id: the slab files' tag; incarnation id; the boot it
last ran in); DATA_DIR/journal.wal holds the records (kvstore_server.journal). Slab files live in
DATA_DIR/slabs, or in --shm-dir (survive a crash of the process, not a reboot).

Checkpoints: a CHECKPOINT(n) record says that the rows of every record in the first n bytes of
the journal were flushed to their slab files before the journal was fsynced. After a reboot (the
page cache is gone) recovery trusts only records before the last checkpoint, unless the policy is
"always", where every record is written after its rows were flushed and is fsynced before the
client is answered.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kvstore_server.journal import (
    ARENA,
    CHECKPOINT,
    COMMIT,
    CREATE,
    DELETE,
    ExtentRef,
    HeadCommit,
    Journal,
    Writer,
    encode_commit,
    frame,
)
from kvstore_server.segments import Growth, HeadStore
from kvstore_server.sequence import Sequence
from kvstore_server.slab import PAGE

if TYPE_CHECKING:
    from kvstore_server.store import Store

log = logging.getLogger("kvstore_server.persistence")

STATE_FILE = "store.json"
JOURNAL_FILE = "journal.wal"
COMPACT_AFTER_BYTES = 64 << 20  # compact once this much was appended and it is 2x the live size


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def read_state(data_dir: Path) -> dict[str, str]:
    path = data_dir / STATE_FILE
    if not path.exists():
        return {"store_id": secrets.token_hex(8), "incarnation_id": uuid.uuid4().hex}
    return dict(json.loads(path.read_text()))


def write_state(data_dir: Path, state: dict[str, str]) -> None:
    path = data_dir / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


class Persistence:
    """Journals what the store acknowledges (see the module docstring)."""

    def __init__(self, store: Store, journal: Journal) -> None:
        self.store = store
        self.journal = journal
        self.live_metadata_bytes = 0  # what a compacted journal would hold, roughly

    def arena(self, namespace: str, arena_id: str) -> None:
        self.journal.append(ARENA, Writer().text(namespace).text(arena_id).bytes())

    def create(self, seq: Sequence) -> None:
        self.journal.append(CREATE, _create_payload(seq))

    def delete(self, seq: Sequence) -> None:
        self.journal.append(DELETE, Writer().text(seq.namespace).text(seq.sequence_id).bytes())
        self.live_metadata_bytes -= _metadata_bytes(seq)

    def commit(
        self, seq: Sequence, prepared: list[tuple[tuple[int, int], HeadStore, Growth]]
    ) -> None:
        """Journal a prepared (written, not yet published) commit; with policy "always" its
        rows are flushed to the slab files first."""
        w = Writer().text(seq.namespace).text(seq.sequence_id).u64(len(prepared))
        for (layer, kv_head), head, growth in prepared:
            commit = _head_commit(layer, kv_head, head, growth)
            if self.journal.policy == "always":
                self._flush(seq.namespace, commit.extent)
            encode_commit(w, commit)
        self.journal.append(COMMIT, w.bytes())
        self.live_metadata_bytes += sum(
            sum(s.centroids.nbytes * 2 + s.sizes.nbytes * 2 for s in g.segments)
            for _, _, g in prepared
        )

    def _flush(self, namespace: str, extent: ExtentRef) -> None:
        arena = self.store.arenas.find(namespace)
        assert arena is not None
        lo = extent.block_start // PAGE * PAGE
        hi = extent.block_start + extent.block_size
        arena.slabs[extent.slab].mem.flush(lo, hi - lo)

    def flush_slabs_and_checkpoint(self) -> None:
        """The everysec timer's work (off the event loop): flush every slab mapping, then
        record a checkpoint covering the journal up to the flush's start, then fsync."""
        if not self.journal.dirty:
            return
        covered = self.journal.size
        for mem in self._mappings():
            mem.flush()
        self.journal.append(CHECKPOINT, Writer().u64(covered).bytes())
        self.journal.sync()

    def _mappings(self) -> list:  # type: ignore[type-arg]
        return [
            slab.mem
            for _, arena in self.store.arenas.items()
            for index, slab in list(arena.slabs.items())
            if index
        ]

    def maybe_compact(self) -> None:
        """Compact when the journal grew well past the live state. The store calls it after a
        change is applied in memory (the snapshot must include it)."""
        appended = self.journal.appended
        if appended > COMPACT_AFTER_BYTES and appended > 2 * max(self.live_metadata_bytes, 0):
            self.compact()

    def compact(self) -> None:
        """Rewrite the journal as the live state (flushed first, so it ends in a checkpoint)."""
        for mem in self._mappings():
            mem.flush()
        frames = snapshot_frames(self.store)
        size = sum(len(f) for f in frames)
        frames.append(frame(CHECKPOINT, Writer().u64(size).bytes()))
        self.journal.rewrite(frames)
        self.live_metadata_bytes = sum(_metadata_bytes(s) for s in self.store.sequences())
        log.info("journal compacted", extra={"bytes": self.journal.size})

    def close(self) -> None:
        self.journal.close()


def snapshot_frames(store: Store) -> list[bytes]:
    """The live state as journal frames: arenas, then per sequence a create and one commit."""
    frames = [
        frame(ARENA, Writer().text(ns).text(arena.arena_id).bytes())
        for ns, arena in store.arenas.items()
    ]
    for seq in store.sequences():
        frames.append(frame(CREATE, _create_payload(seq)))
        heads = [(key, h) for key, h in sorted(seq.heads.items()) if h.extent is not None]
        if not heads:
            continue
        w = Writer().text(seq.namespace).text(seq.sequence_id).u64(len(heads))
        for (layer, kv_head), head in heads:
            encode_commit(
                w,
                HeadCommit(
                    layer,
                    kv_head,
                    extent_ref(head),
                    head.num_rows,
                    head.num_segments,
                    head.centroids,
                    head.value_sums,
                    head.sizes,
                    head.offsets[1:],
                ),
            )
        frames.append(frame(COMMIT, w.bytes()))
    return frames


def _create_payload(seq: Sequence) -> bytes:
    g = seq.geometry
    w = Writer().text(seq.namespace).text(seq.sequence_id)
    return (
        w.u64(g.num_layers)
        .u64(g.num_kv_heads)
        .u64(g.head_dim)
        .text(g.dtype)
        .f64(seq.created_unix_s)
        .bytes()
    )


def _head_commit(layer: int, kv_head: int, head: HeadStore, growth: Growth) -> HeadCommit:
    extent = growth.extent if growth.extent is not None else head.extent
    assert extent is not None
    ends, n0 = [], head.num_rows
    for seg in growth.segments:
        ends.append(seg.offsets[1:] + n0)
        n0 += seg.num_rows
    return HeadCommit(
        layer,
        kv_head,
        ExtentRef(
            extent.slab,
            extent.block[0],
            extent.block[1],
            extent.offset,
            extent.data.shape[0],
            extent.generation,
        ),
        growth.num_rows,
        len(growth.segments),
        np.concatenate([s.centroids for s in growth.segments]),
        np.concatenate([s.value_sums for s in growth.segments]),
        np.concatenate([s.sizes for s in growth.segments]),
        np.concatenate(ends),
    )


def extent_ref(head: HeadStore) -> ExtentRef:
    e = head.extent
    assert e is not None
    return ExtentRef(e.slab, e.block[0], e.block[1], e.offset, e.data.shape[0], e.generation)


def _metadata_bytes(seq: Sequence) -> int:
    return sum(h.num_clusters * (8 * h.head_dim + 16) for h in seq.heads.values())
