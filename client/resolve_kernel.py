"""Cluster ids -> gather run table for the descriptor cache, in one launch or as torch ops.

Row e of a call asks for clusters `ids[e, :]` (-1 = padding) of the cached head in table slot
`slot[e]`. Both versions produce the same `RunTable`: per requested cluster a keys run and a
values run (source row from the table's base address, destination row in the [2, E * M] output,
length, clipped so nothing is written past a row's M = max_tokens slots), the per-row token
offsets [E, n + 1] the engine expects, and flags: an id outside the cached cluster count (bad or
appended since), a row over max_tokens, and the rows read. `resolve_rows_reference` is plain
torch (CPU, and the reference the tests compare against); `resolve_rows` is ONE Triton program
per row (a cumsum over its n ids), so a CUDA call launches one kernel here instead of dozens.
Given the output `out` [2 * E * M, W] words (allocated uninitialised), both also zero each
row's padding tail (its slots past the rows it receives, keys and values), so the gather
writes everything else and nothing zeroes the whole output first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: the reference is used
    triton = None

BAD, OVER, STALE, ROWS = range(4)  # flags columns


@dataclass(slots=True)
class RunTable:
    src: torch.Tensor  # [2K] int64 source row from the base (keys runs, then values runs)
    dst: torch.Tensor  # [2K] int64 destination row in the [2 * E * M] output
    lens: torch.Tensor  # [2K] int64 rows (0 for padding and ids outside the cache)
    offsets: torch.Tensor  # [E, n + 1] int64 token offsets of each requested cluster
    bad_rows: torch.Tensor  # [E] bool: the row holds an id outside its cached cluster count
    flags: torch.Tensor  # [4] int64: any bad, any row over max_tokens, stale (set later), rows


@dataclass(slots=True)
class Columns:
    """The cached table's columns the lookup reads (client.head_table.DeviceColumns)."""

    starts: torch.Tensor  # [T] first row of each cached cluster in its head
    lens: torch.Tensor  # [T] rows of each cached cluster
    first: torch.Tensor  # [S] index of each slot's cluster 0 in starts / lens
    clusters: torch.Tensor  # [S]
    keys_row: torch.Tensor  # [S] first key row of the slot's head, from the base
    values_row: torch.Tensor  # [S]


def available() -> bool:
    return triton is not None


def resolve_rows_reference(
    cols: Columns,
    slot: torch.Tensor,
    ids: torch.Tensor,
    max_tokens: int,
    out: torch.Tensor | None = None,  # [2 * E * M, W] words: padding tails zeroed if given
) -> RunTable:
    """slot [E], ids [E, n] int64 on one device -> RunTable (plain torch, no host sync)."""
    e, n = ids.shape
    limit = cols.clusters[slot][:, None]  # [E, 1]
    inside = (ids >= 0) & (ids < limit)  # [E, n]
    bad = (ids < -1) | ((ids >= 0) & ~inside)
    g = cols.first[slot][:, None] + torch.where(inside, ids, 0)  # [E, n] index into the columns
    g = g.clamp(max=cols.starts.shape[0] - 1)  # an empty last head points past the end
    start = cols.starts[g]  # [E, n]
    lens = torch.where(inside, cols.lens[g], 0)  # [E, n]
    cum = lens.cumsum(-1)  # [E, n]
    before = cum - lens
    over = cum[:, -1] > max_tokens  # [E]
    lens = torch.minimum(lens, (max_tokens - before).clamp(min=0))  # never past the row
    dst = (torch.arange(e, device=ids.device)[:, None] * max_tokens + before).view(-1)  # [K]
    keys = (cols.keys_row[slot][:, None] + start).view(-1)
    values = (cols.values_row[slot][:, None] + start).view(-1)
    offsets = torch.zeros(e, n + 1, dtype=torch.int64, device=ids.device)
    offsets[:, 1:] = cum
    flat = lens.reshape(-1)
    if out is not None:
        zero_tails_reference(out, lens.sum(-1), max_tokens)
    flags = torch.stack(
        [bad.any().long(), over.any().long(), torch.zeros_like(flat.sum()), flat.sum()]
    )
    return RunTable(
        torch.cat([keys, values]),
        torch.cat([dst, dst + e * max_tokens]),
        torch.cat([flat, flat]),
        offsets,
        bad.any(-1),
        flags,
    )


def zero_tails_reference(
    out: torch.Tensor,  # [2 * E * M, W]
    rows: torch.Tensor,  # [E] rows each output row receives (<= M)
    max_tokens: int,
) -> None:
    """Zero slots [rows[e], M) of every row e, keys and values (plain torch)."""
    e = rows.shape[0]
    tail = torch.arange(max_tokens, device=out.device)[None, :] >= rows[:, None]  # [E, M]
    out.view(2, e, max_tokens, out.shape[1])[:, tail] = 0


if triton is not None:

    @triton.jit
    def _resolve(
        ids,  # [E, n]
        slot,  # [E]
        first,  # [S]
        clusters,  # [S]
        starts,  # [T]
        lens_tab,  # [T]
        keys_row,  # [S]
        values_row,  # [S]
        src,  # [2K] out
        dst,  # [2K] out
        lens,  # [2K] out
        offsets,  # [E, n + 1] out (column 0 pre-zeroed)
        bad_rows,  # [E] int8 out
        flags,  # [4] int64, pre-zeroed
        out,  # [2 * E * M, W] words: padding tails zeroed (if ZERO)
        n,
        max_tokens,
        last,  # T - 1
        k,  # E * n: values runs start here
        half,  # E * max_tokens: values destinations start here
        BLOCK_N: tl.constexpr,
        W: tl.constexpr,
        BLOCK_Z: tl.constexpr,
        ZERO: tl.constexpr,
    ):
        e = tl.program_id(0).to(tl.int64)
        j = tl.arange(0, BLOCK_N)
        m = j < n
        s = tl.load(slot + e)
        c = tl.load(clusters + s)
        i = tl.load(ids + e * n + j, mask=m, other=-1)
        inside = m & (i >= 0) & (i < c)
        bad = m & ((i < -1) | ((i >= 0) & (i >= c)))
        g = tl.minimum(tl.load(first + s) + tl.where(inside, i, 0), last)
        start = tl.load(starts + g, mask=inside, other=0)
        ln = tl.load(lens_tab + g, mask=inside, other=0)
        cum = tl.cumsum(ln, axis=0)
        before = cum - ln
        clipped = tl.minimum(ln, tl.maximum(max_tokens - before, 0))
        d = e * max_tokens + before
        run = e * n + j
        tl.store(src + run, tl.load(keys_row + s) + start, mask=m)
        tl.store(src + k + run, tl.load(values_row + s) + start, mask=m)
        tl.store(dst + run, d, mask=m)
        tl.store(dst + k + run, d + half, mask=m)
        tl.store(lens + run, clipped, mask=m)
        tl.store(lens + k + run, clipped, mask=m)
        tl.store(offsets + e * (n + 1), 0)
        tl.store(offsets + e * (n + 1) + 1 + j, cum, mask=m)
        got = tl.sum(clipped, axis=0)  # rows this row receives (<= max_tokens)
        if ZERO:  # slots [got, M) of this row's keys and values = 0
            words = tl.arange(0, W)
            r0 = got
            while r0 < max_tokens:
                r = r0 + tl.arange(0, BLOCK_Z)
                at = (e * max_tokens + r)[:, None] * W + words[None, :]  # [BLOCK_Z, W]
                keep = (r < max_tokens)[:, None]
                zero = tl.zeros((BLOCK_Z, W), tl.int64)
                tl.store(out + at, zero, mask=keep)
                tl.store(out + half * W + at, zero, mask=keep)
                r0 += BLOCK_Z
        any_bad = tl.max(bad.to(tl.int32), axis=0)
        tl.store(bad_rows + e, any_bad.to(tl.int8))
        tl.atomic_max(flags + 0, any_bad.to(tl.int64))
        tl.atomic_max(flags + 1, (tl.sum(ln, axis=0) > max_tokens).to(tl.int64))
        tl.atomic_add(flags + 3, got)


TAIL_BYTES = 16384  # bytes a zeroing step of the resolve kernel writes


def resolve_rows(
    cols: Columns,
    slot: torch.Tensor,
    ids: torch.Tensor,
    max_tokens: int,
    out: torch.Tensor | None = None,  # [2 * E * M, W] words: padding tails zeroed if given
) -> RunTable:
    """The same RunTable as resolve_rows_reference from one Triton launch (one program/row);
    W (out's row words) must be a power of two."""
    e, n = ids.shape
    k = e * n
    dev = ids.device
    table = torch.empty(6 * k + e * (n + 1), dtype=torch.int64, device=dev)  # one allocation
    src, dst, lens = table[: 2 * k], table[2 * k : 4 * k], table[4 * k : 6 * k]  # [2K] each
    offsets = table[6 * k :].view(e, n + 1)
    bad_rows = torch.empty(e, dtype=torch.int8, device=dev)
    flags = torch.zeros(4, dtype=torch.int64, device=dev)
    w = 1 if out is None else int(out.shape[1])
    if e:
        _resolve[(e,)](
            ids.contiguous(), slot, cols.first, cols.clusters, cols.starts, cols.lens,
            cols.keys_row, cols.values_row, src, dst, lens, offsets, bad_rows, flags,
            flags if out is None else out, n, max_tokens, cols.starts.shape[0] - 1, k,
            e * max_tokens, BLOCK_N=triton.next_power_of_2(max(n, 1)), W=w,
            BLOCK_Z=max(1, TAIL_BYTES // (8 * w)), ZERO=out is not None,
        )  # fmt: skip
    return RunTable(src, dst, lens, offsets, bad_rows.view(torch.bool), flags)
