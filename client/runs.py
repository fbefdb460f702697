"""Run tables of a same-host gather: which contiguous row runs go where.

A run is (source row, destination row, length): one cluster of one entry, read from the slab
that holds it. `runs` builds them for a whole FetchDescriptors reply with a few numpy calls;
`expand_runs` is the row-by-row form the index gathers use; `merge_runs` joins runs that
continue each other (for copy-engine transfers).
"""

from __future__ import annotations

import numpy as np

from client.descriptors import KEYS_OFFSET, ROW_BYTES, SLAB, VALUES_OFFSET, DescriptorBatch


def runs(
    batch: DescriptorBatch,
    slots: np.ndarray,  # [E] output row of each entry
    max_tokens: int,
    half: int,
    entry_shift: np.ndarray | None = None,  # [E] rows added to every source row of an entry
) -> list[tuple[int, np.ndarray]]:
    """Per slab: [3, K] int64 (source row, destination row, length) of every cluster run, keys
    then values (value destinations start at `half`). With `entry_shift` (source rows counted
    from one common base across slabs) the answer is ONE table, under slab -1."""
    t = batch.table
    if slots.shape[0] != t.shape[0]:
        raise ValueError(f"{slots.shape[0]} slots for {t.shape[0]} entries")
    rows = batch.entry_rows()  # [E]
    over = np.flatnonzero(rows > max_tokens)
    if over.shape[0]:
        i = int(over[0])
        raise ValueError(f"fetched {int(rows[i])} tokens for row {int(slots[i])} > {max_tokens}")
    counts = np.diff(batch.bounds)  # [E]
    entry = np.repeat(np.arange(t.shape[0]), counts)  # [K] entry of each cluster
    cum = np.zeros(batch.lens.shape[0] + 1, np.int64)
    np.cumsum(batch.lens, out=cum[1:])
    # per entry: first destination row minus the cumulative row count before it
    dst_base = slots * max_tokens - cum[batch.bounds[:-1]]  # [E]
    rb = t[:, ROW_BYTES]
    keys_base = t[:, KEYS_OFFSET] // rb  # [E]
    values_base = t[:, VALUES_OFFSET] // rb
    if entry_shift is not None:
        keys_base, values_base = keys_base + entry_shift, values_base + entry_shift
    out = np.empty((3, 2, entry.shape[0]), np.int64)  # (src, dst, len) x (keys, values) x K
    np.add(batch.row_starts, keys_base[entry], out=out[0, 0])
    np.add(batch.row_starts, values_base[entry], out=out[0, 1])
    np.add(cum[:-1], dst_base[entry], out=out[1, 0])
    np.add(out[1, 0], half, out=out[1, 1])
    out[2] = batch.lens
    if entry_shift is not None:
        return [(-1, out.reshape(3, -1))]
    slab = t[entry, SLAB]  # [K]
    slabs = np.unique(slab)
    if slabs.shape[0] == 1:
        return [(int(slabs[0]), out.reshape(3, -1))]
    order = np.argsort(slab, kind="stable")  # clusters grouped by slab, request order within
    edges = [*np.searchsorted(slab[order], slabs, side="left").tolist(), order.shape[0]]
    return [
        (int(index), out[:, :, order[edges[j] : edges[j + 1]]].reshape(3, -1))
        for j, index in enumerate(slabs.tolist())
    ]


def expand_runs(runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[3, K] runs -> (source rows [M], destination rows [M])."""
    src, dst, lens = runs
    total = int(lens.sum())
    step = np.arange(total, dtype=np.int64)
    cum = np.zeros(lens.shape[0] + 1, np.int64)
    np.cumsum(lens, out=cum[1:])
    within = step - np.repeat(cum[:-1], lens)
    return np.repeat(src, lens) + within, np.repeat(dst, lens) + within


def merge_runs(runs: np.ndarray) -> np.ndarray:
    """[3, K] runs -> [3, K'] with runs that continue each other (source and destination)
    merged; zero-length runs dropped."""
    runs = runs[:, runs[2] > 0]
    if runs.shape[1] < 2:
        return runs
    src, dst, lens = runs
    joins = (src[1:] == src[:-1] + lens[:-1]) & (dst[1:] == dst[:-1] + lens[:-1])  # [K - 1]
    head = np.concatenate([[True], ~joins])  # [K] run starts a merged run
    starts = np.flatnonzero(head)
    merged_lens = np.add.reduceat(lens, starts)
    return np.stack([src[starts], dst[starts], merged_lens])
