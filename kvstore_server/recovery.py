"""Warm restart: rebuild a store from DATA_DIR (journal + slab files) and re-attach its slabs.

Every acknowledged sequence comes back with the same bytes, cluster ids and metadata, in the
same slab files (a same-host reader's mappings stay valid). The incarnation id is kept when
nothing acknowledged can have been lost: no sequence dropped (slab file gone, e.g. /dev/shm after
a reboot), and after a reboot only with fsync policy "always". Otherwise a new incarnation id
tells clients that state was lost (client.StoreRestartedError), and what survived is served.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kvstore_server.arena import ArenaConfig, SharedArena
from kvstore_server.arenas import Arenas
from kvstore_server.errors import StoreError
from kvstore_server.journal import (
    ARENA,
    CHECKPOINT,
    COMMIT,
    CREATE,
    DELETE,
    ExtentRef,
    HeadCommit,
    Journal,
    Reader,
    decode_commit,
    read_records,
)
from kvstore_server.persistence import (
    JOURNAL_FILE,
    Persistence,
    boot_id,
    read_state,
    write_state,
)
from kvstore_server.segments import HeadStore
from kvstore_server.sequence import Geometry, Sequence
from kvstore_server.store import Store, StoreConfig

log = logging.getLogger("kvstore_server.recovery")
GENERATION_SKIP = 1 << 32  # generations of a new run start past any a reader may have cached


@dataclass(slots=True)
class _Head:
    extent: ExtentRef
    num_rows: int = 0
    segments: int = 0
    parts: list[HeadCommit] = field(default_factory=list)


@dataclass(slots=True)
class _Seq:
    geometry: Geometry
    created_unix_s: float
    heads: dict[tuple[int, int], _Head] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class PersistOptions:
    data_dir: Path
    slab_dir: Path
    fsync: str = "everysec"
    slab_bytes: int = 256 << 20
    max_lease_ttl_s: float = 60.0
    max_namespaces: int = 4096


def open_persistent_store(
    options: PersistOptions, config: StoreConfig, clock: Callable[[], float] = time.monotonic
) -> Store:
    """The store of DATA_DIR (empty on first start), journaling from here on."""
    data_dir = options.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    options.slab_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(data_dir)
    rebooted = state.get("boot_id", boot_id()) != boot_id()
    records, good = read_records(data_dir / JOURNAL_FILE)
    trust = None if not rebooted or options.fsync == "always" else _last_checkpoint(records)
    arena_ids, seqs, untrusted = _replay(records, trust)
    arena_config = ArenaConfig(
        options.slab_dir, options.slab_bytes, options.max_lease_ttl_s, "d" + state["store_id"]
    )
    arenas = Arenas("require", arena_config, options.max_namespaces, clock)
    rebuilt, dropped = _attach(arenas, arena_ids, seqs)
    lost = dropped > 0 or untrusted > 0
    incarnation = uuid.uuid4().hex if lost else state["incarnation_id"]
    store = Store(config, arenas, incarnation, clock)
    for seq in rebuilt:
        store.adopt(seq)
    journal = Journal(data_dir / JOURNAL_FILE, options.fsync)
    journal.truncate(good)
    store.persistence = Persistence(store, journal)
    store.persistence.compact()
    write_state(data_dir, {**state, "incarnation_id": incarnation, "boot_id": boot_id()})
    log.info(
        "recovered",
        extra={
            "data_dir": str(data_dir),
            "sequences": len(rebuilt),
            "segments": sum(s.num_segments for s in rebuilt),
            "dropped_sequences": dropped,
            "untrusted_records": untrusted,
            "rebooted": rebooted,
            "incarnation_id": incarnation,
            "kept_incarnation": not lost,
        },
    )
    return store


def _last_checkpoint(records: list[tuple[int, bytes, int]]) -> int:
    covered = 0
    for kind, payload, _ in records:
        if kind == CHECKPOINT:
            covered = Reader(payload).u64()
    return covered


def _replay(
    records: list[tuple[int, bytes, int]], trust: int | None
) -> tuple[dict[str, str], dict[tuple[str, str], _Seq], int]:
    """(arena id per namespace, live sequences, records past the trusted prefix)."""
    arena_ids: dict[str, str] = {}
    seqs: dict[tuple[str, str], _Seq] = {}
    untrusted = 0
    for kind, payload, end in records:
        if trust is not None and end > trust:
            untrusted += kind != CHECKPOINT
            continue
        r = Reader(payload)
        if kind == ARENA:
            ns = r.text()
            arena_ids[ns] = r.text()
        elif kind == CREATE:
            key = (r.text(), r.text())
            dims = (r.u64(), r.u64(), r.u64())
            try:
                geometry = Geometry(*dims, r.text())
            except StoreError:
                continue
            seqs[key] = _Seq(geometry, r.f64())
        elif kind == COMMIT:
            key = (r.text(), r.text())
            seq = seqs.get(key)
            for _ in range(r.u64()):
                if seq is None:
                    break
                part = decode_commit(r, seq.geometry.head_dim)
                head = seq.heads.setdefault((part.layer, part.kv_head), _Head(part.extent))
                head.extent, head.num_rows = part.extent, part.num_rows
                head.segments += part.segments
                head.parts.append(part)
        elif kind == DELETE:
            seqs.pop((r.text(), r.text()), None)
    return arena_ids, seqs, untrusted


def _attach(
    arenas: Arenas, arena_ids: dict[str, str], seqs: dict[tuple[str, str], _Seq]
) -> tuple[list[Sequence], int]:
    """Map the slabs the sequences use and rebuild them; (sequences, how many were dropped)."""
    for ns, arena_id in arena_ids.items():
        arenas.get(ns, arena_id)
    for (ns, _), seq in seqs.items():
        arena = arenas.find(ns)
        for head in seq.heads.values():
            if arena is not None and head.extent.slab not in arena.slabs:
                arena.attach_slab(head.extent.slab)
    rebuilt, dropped = [], 0
    for (ns, sid), seq in seqs.items():
        arena = arenas.find(ns)  # None: the namespace never stored K/V (nor needs to here)
        built = _rebuild(ns, sid, seq, arena) if arena is not None or not seq.heads else None
        if built is None:
            dropped += 1
            log.warning("sequence not re-attached", extra={"namespace": ns, "sequence_id": sid})
        else:
            rebuilt.append(built)
    for _, arena in arenas.items():
        _tidy(arena)
    return rebuilt, dropped


def _rebuild(ns: str, sid: str, seq: _Seq, arena: SharedArena | None) -> Sequence | None:
    g = seq.geometry
    out = Sequence(ns, sid, g, seq.created_unix_s)
    taken: list[HeadStore] = []
    for (layer, kv_head), head in seq.heads.items():
        e = head.extent
        if arena is None or e.slab not in arena.slabs:
            break
        try:
            extent = arena.reattach(
                e.slab, (e.block_start, e.block_size), e.data_offset, e.nbytes, e.generation
            )
        except (ValueError, KeyError):
            break
        store = HeadStore(g.head_dim, g.row_bytes, arena)
        parts = head.parts
        offsets = np.concatenate([np.zeros(1, np.int64), *(p.ends for p in parts)])
        metadata = (
            np.concatenate([p.centroids for p in parts]),
            np.concatenate([p.value_sums for p in parts]),
            np.concatenate([p.sizes for p in parts]),
            offsets,
        )
        store.restore(extent, head.num_rows, metadata, head.segments)
        out.adopt(layer, kv_head, store)
        taken.append(store)
        c = store.num_clusters
        out.bytes_used += c * g.head_dim * 8 + c * 8 + (c + head.segments) * 8
        out.bytes_used += 2 * head.num_rows * g.row_bytes
    else:
        return out
    for store in taken:  # a head could not be re-attached: the sequence is incomplete
        store.release()
    return None


def _tidy(arena: SharedArena) -> None:
    """Remove slab files no sequence uses, wipe the free space of the others (a dead extent's
    header and rows are zero again), and move generations past every earlier one."""
    for path in arena.directory.glob(arena.file_prefix + "*"):
        suffix = path.name[len(arena.file_prefix) :]
        if suffix.isdigit() and int(suffix) not in arena.slabs:
            path.unlink(missing_ok=True)
    for index, slab in list(arena.slabs.items()):
        if index == 0:
            continue
        if slab.empty:
            del arena.slabs[index]
            slab.path.unlink(missing_ok=True)
            continue
        for start, size in list(slab.free):
            slab.wipe(start, start + size, start, start + size)
    arena.generation += GENERATION_SKIP + secrets.randbelow(GENERATION_SKIP)
