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
    batch: DescriptorBatch, slots: np.ndarray, max_tokens: int, half: int
) -> list[tuple[int, np.ndarray]]:
    """Per slab: [3, K] int64 (source row, destination row, length) of every cluster run, keys
    then values (value destinations start at `half`); `slots[i]` is entry i's output row."""
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
    within = cum[:-1] - np.repeat(cum[batch.bounds[:-1]], counts)  # [K] first row in the entry
    dst = slots[entry] * max_tokens + within  # [K]
    rb = t[:, ROW_BYTES]
    keys = batch.row_starts + (t[:, KEYS_OFFSET] // rb)[entry]  # [K]
    values = batch.row_starts + (t[:, VALUES_OFFSET] // rb)[entry]
    slab = t[entry, SLAB]  # [K]
    out = []
    slabs = np.unique(slab).tolist()
    for index in slabs:
        pick = slab == index if len(slabs) > 1 else slice(None)
        k, v, d, n = keys[pick], values[pick], dst[pick], batch.lens[pick]
        out.append(
            (
                index,
                np.stack([np.concatenate([k, v]), np.concatenate([d, d + half]), np.tile(n, 2)]),
            )
        )
    return out


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
