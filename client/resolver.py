"""Same-host misses without an RPC per call: whole-head descriptors cached under a renewed lease.

A (sequence, layer, kv_head)'s clusters do not move while a lease holds its extent (the store
defers freeing leased extents; appends within capacity only add rows after the old ones). So
`DescriptorCache` asks the store once per head for its whole layout (`FetchDescriptors` with
`whole_heads`: the extent and every cluster's first row and length), keeps it as columns on the
host and on the compute device, and resolves a call's cluster ids itself (a few tensor ops on
the ids' device: table lookup, per-row cumsum, run table) before ONE gather launch. The lease is
renewed by one cheap RPC (no ids) once `renew_fraction` of its TTL has passed, not per call.

Safety: the renewal answers every cached head's current generation; a changed generation (the
head grew into a new extent) drops that head from the cache, a failed renewal (a sequence
deleted) drops everything. After each gather the generation words of the extents read are
re-checked (`StaleDescriptorError` if any changed: the lease lapsed and memory was reused).
Ids outside the cached cluster count (bad ids, or clusters appended since the head was cached)
and rows longer than `max_tokens` are detected on the device and reported after the gather as
`ResolveFallback`: the caller then takes the per-call RPC path, which refreshes nothing here but
answers exactly like streaming (the store's own checks, messages and statuses).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from client import gather_kernel, resolve_kernel
from client.descriptors import (
    EXTENT_OFFSET,
    GENERATION,
    SLAB,
    ResolveFallback,
    StaleDescriptorError,
)
from client.head_table import DeviceColumns, HeadTable
from client.shm import ArenaReader
from client.types import FetchRequest

log = logging.getLogger("client.resolver")

HeadKey = tuple[str, int, int]  # (sequence id, layer, kv_head)
DESCRIBE_BATCH = 32  # heads per whole-head description RPC (a 128K head is 128 KiB of layout)
MAX_PLANS = 256  # memoised key lists (one per (batch, layer) in a decode loop)


@dataclass(slots=True)
class ResolverConfig:
    """`renew_fraction`: renew the leases once this fraction of their TTL has passed."""

    renew_fraction: float = 1 / 3

    def __post_init__(self) -> None:
        if not 0 < self.renew_fraction < 1:
            raise ValueError(f"renew_fraction={self.renew_fraction} must be in (0, 1)")


@dataclass(slots=True)
class Resolved:
    """One call's result: keys, values [E, M, D] (zero padded), offsets [E, n + 1] int64."""

    keys: torch.Tensor
    values: torch.Tensor
    offsets: torch.Tensor
    rows: int  # K/V rows read (keys and values each)


@dataclass(slots=True)
class _Plan:
    version: int  # HeadTable.version it was made at
    slots: np.ndarray  # [E] int64
    geometry: tuple[int, int, torch.dtype, int]  # row_bytes, head_dim, dtype, longest cluster
    devices: dict[str, torch.Tensor]  # slots on each device
    header_checks: dict[str, tuple[torch.Tensor, torch.Tensor]]  # per device: what headers hold

    def on(self, device: torch.device) -> torch.Tensor:  # [E] int64
        if device.type == "cpu":
            return torch.from_numpy(self.slots)
        got = self.devices.get(str(device))
        if got is None:
            got = self.devices[str(device)] = torch.from_numpy(self.slots).to(device)
        return got

    def headers(
        self, dev: DeviceColumns, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(header word, expected generation) [E] of the rows' extents (fixed per version)."""
        got = self.header_checks.get(str(device))
        if got is None:
            slot = self.on(device)
            got = self.header_checks[str(device)] = (dev.header_word[slot], dev.generation[slot])
        return got


class DescriptorCache:
    """See the module docstring. `client` is a blocking KVStoreClient of one store."""

    def __init__(
        self,
        client,  # type: ignore[no-untyped-def]  # client.sync.KVStoreClient (import cycle)
        arena: ArenaReader,
        config: ResolverConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.arena = arena
        self.config = config or ResolverConfig()
        self.clock = clock
        self.table = HeadTable(arena)
        self._leases: dict[int, tuple[float, float]] = {}  # lease id -> (issued, ttl)
        self._lock = threading.RLock()
        self._plans: dict[tuple[HeadKey, ...], _Plan] = {}
        self._drops = self._seen_drops = 0  # times the store connection left READY
        self._ready = False
        self._unwatch = client.watch_connection(self._connection)
        self.renewals = 0  # RPCs spent on renewals and refreshes (for tests and stats)
        self.refreshes = 0

    def fetch(
        self,
        keys: Sequence[HeadKey],  # [E] one head per output row
        cluster_ids: torch.Tensor,  # [E, n] int64 on the compute device, -1 = padding
        max_tokens: int,
    ) -> Resolved:
        """Gather every row's clusters into [E, max_tokens, D] keys and values on the ids'
        device; raises ResolveFallback or StaleDescriptorError (nothing returned then)."""
        with self._lock:
            self._renew_if_due()
            plan = self._plan(keys)
            return self._gather(keys, plan, cluster_ids, max_tokens)

    def _plan(self, keys: Sequence[HeadKey]) -> _Plan:
        """The rows' slots and geometry, memoised per key list while the table is unchanged
        (a decode step asks for the same (sequence, layer, kv_head) list layer after layer)."""
        memo = tuple(keys)
        plan = self._plans.get(memo)
        if plan is None or plan.version != self.table.version:
            slots = self._slots(keys)
            plan = _Plan(self.table.version, slots, self.table.geometry(slots), {}, {})
            if len(self._plans) >= MAX_PLANS:
                self._plans.clear()
            self._plans[memo] = plan
        return plan

    def forget(self, sequence_ids: Sequence[str]) -> None:
        """Drop cached heads of these sequences (deleted or re-created by this process)."""
        with self._lock:
            self.table.drop(lambda key: key[0] in set(sequence_ids))

    def close(self) -> None:
        self._unwatch()
        with self._lock:
            for lease_id in self._leases:
                self.client.done_with_lease(lease_id)
            self._leases.clear()
            self.table.clear()

    def _connection(self, ready: bool) -> None:
        """Channel watcher (a gRPC thread): a READY -> other change means the connection
        dropped (store killed or restarted): the next call renews before serving anything."""
        if self._ready and not ready:
            self._drops += 1
        self._ready = ready

    def _renew_if_due(self) -> None:
        now = self.clock()
        dropped = self._drops != self._seen_drops
        if dropped or any(
            now >= t0 + ttl * self.config.renew_fraction for t0, ttl in self._leases.values()
        ):
            self.renew()

    def renew(self) -> None:
        """One RPC (no ids): a new lease on every cached head, the old ones released; heads
        whose extent changed are dropped. Runs by itself once renew_fraction of a TTL passed."""
        with self._lock:
            self._renew()

    def _renew(self) -> None:
        now, drops = self.clock(), self._drops
        for lease_id in self._leases:
            self.client.done_with_lease(lease_id)  # released by the renewal RPC itself
        self._leases.clear()
        keys = self.table.keys()
        if not keys:
            self.table.clear()
            self._seen_drops = drops
            return
        requests = [FetchRequest(s, layer, h, np.empty(0, np.int64)) for s, layer, h in keys]
        try:
            batch = self.client.fetch_descriptors(requests)
        except Exception as exc:  # any failure: nothing cached is protected now
            log.info("lease renewal failed (%s); dropping the descriptor cache", exc)
            self.table.clear()
            return
        self.renewals += 1
        self._seen_drops = drops  # the store answered after the drop: still the same one
        self._leases[batch.lease_id] = (now, batch.lease_ttl_s)
        t = batch.table
        changed = self.table.changed(keys, t[:, SLAB], t[:, EXTENT_OFFSET], t[:, GENERATION])
        if changed:
            log.debug("%d cached heads moved to new extents; dropped", len(changed))
            self.table.drop(lambda key: key in changed)

    def _slots(self, keys: Sequence[HeadKey]) -> np.ndarray:  # [E] table slot of each row
        missing = self.table.missing(keys)
        for i in range(0, len(missing), DESCRIBE_BATCH):  # replies stay well under 64 MiB
            self._describe(missing[i : i + DESCRIBE_BATCH])
        return self.table.slots(keys)

    def _describe(self, heads: list[HeadKey]) -> None:
        requests = [FetchRequest(s, layer, h, np.empty(0, np.int64)) for s, layer, h in heads]
        issued = self.clock()  # before the call: the store's deadline is no earlier
        batch = self.client.fetch_descriptors(requests, whole_heads=True)
        if not batch.whole_heads:
            self.client.done_with_lease(batch.lease_id)
            raise ResolveFallback("the store does not describe whole heads")
        self.refreshes += 1
        self._leases[batch.lease_id] = (issued, batch.lease_ttl_s)
        self.table.add(heads, batch)

    def _gather(
        self, keys: Sequence[HeadKey], plan: _Plan, ids: torch.Tensor, max_tokens: int
    ) -> Resolved:
        device = ids.device
        slots = plan.slots
        row_bytes, head_dim, dtype, longest = plan.geometry
        e = ids.shape[0]
        w = row_bytes // 8 if row_bytes % 8 == 0 else 0
        cuda = device.type == "cuda"
        if not w or (cuda and not (gather_kernel.available(w) and resolve_kernel.available())):
            raise ResolveFallback(f"no direct gather for row_bytes={row_bytes} on {device}")
        dev = self.table.device(device)
        slot_t = plan.on(device)  # [E]
        if cuda:  # uninitialised: the resolve kernel zeroes the padding tails, the gather the rest
            kv = torch.empty(2 * e * max_tokens, w, dtype=torch.int64, device=device)  # [2EM, W]
            runs = resolve_kernel.resolve_rows(dev.lookup, slot_t, ids, max_tokens, kv)
        else:  # a host memset is cheaper than masking the tails
            kv = torch.zeros(2 * e * max_tokens, w, dtype=torch.int64)
            runs = resolve_kernel.resolve_rows_reference(dev.lookup, slot_t, ids, max_tokens)
        if cuda:
            src = self.table.cuda_source(row_bytes, device)
            gather_kernel.gather_runs(src, kv, runs.src, runs.dst, runs.lens, longest)
            # headers re-read on the GPU after the gather's reads (stream order): no host loop
            at, want = plan.headers(dev, device)  # [E] each
            gather_kernel.check_headers(src, at, want, runs.flags[resolve_kernel.STALE :])
            self.arena.mark_done(device)  # the next staging waits for this point
        else:
            self.table.gather_cpu(slots, runs, kv.numpy(), row_bytes)
        bad, over, stale, rows = runs.flags.tolist()  # one copy back: waits for the GPU work
        if cuda and stale:
            self._forget_all()
            raise StaleDescriptorError("an extent read by this call was freed or reused")
        if not cuda:
            self._verify(slots)
        if bad:  # re-describe these heads next time: clusters may have been appended
            redo = {keys[i] for i in np.flatnonzero(runs.bad_rows.cpu().numpy()).tolist()}
            self.table.drop(lambda key: key in redo)
        if bad or over:
            raise ResolveFallback(
                "ids outside the cached cluster counts"
                if bad
                else f"a row holds more than max_tokens={max_tokens} tokens"
            )
        out = kv.view(dtype).view(2, e, max_tokens, head_dim)
        return Resolved(out[0], out[1], runs.offsets, rows)

    def _verify(self, slots: np.ndarray) -> None:
        """StaleDescriptorError if an extent read by this call was freed or reused."""
        try:
            self.arena.verify_generations(*self.table.extents(slots))
        except StaleDescriptorError:
            self._forget_all()
            raise

    def _forget_all(self) -> None:
        """A lease lapsed unnoticed: nothing cached can be trusted any more."""
        for lease_id in self._leases:
            self.client.done_with_lease(lease_id)
        self._leases.clear()
        self.table.clear()
