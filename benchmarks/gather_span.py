"""Why the same-host gather is slower on the store's arena than on one small pool (CUDA only).

`python -m benchmarks.gather_span [--heads 128] [--out FILE]`

The zero-copy Triton run gather (client.gather_kernel) moves one 128K x 16 miss call
(128 heads x 147 clusters x (keys + values), 4 KiB runs, 154 MB) from registered /dev/shm
memory laid out several ways, all in the same run:
- "1 GiB pool, random": runs anywhere in one 1 GiB mapping (what benchmarks.zero_copy timed);
- "<span> pool, random": runs anywhere in one mapping of the arena's size (8 GiB at 128 heads);
- "<span> pool, arena layout": the store's layout, one 64 MiB extent per head (keys half, then
  values half), 147 random clusters per head, runs in the order the client builds them;
- "... sorted by source": the same runs ordered by source address;
- "... in 256 MiB slabs": the same layout over separately mapped and registered 256 MiB slab
  files (what the store does), source rows counted from the lowest slab address.
Differences between these rows separate address span / page-walk reach, layout and the number
of registrations from the kernel itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from benchmarks.zero_copy import HostRows, cuda_ms, mapping
from client import gather_kernel

ROW, RUN_ROWS, HEAD_ROWS, PICK = 256, 16, 131072, 147
W = ROW // 8
SLAB = 256 << 20


def random_runs(k: int, pool_rows: int, rng: np.random.Generator) -> np.ndarray:  # [3, K]
    src = rng.choice(pool_rows // RUN_ROWS, k, replace=False) * RUN_ROWS
    return np.stack([src, np.arange(k) * RUN_ROWS, np.full(k, RUN_ROWS)]).astype(np.int64)


def arena_runs(heads: int, rng: np.random.Generator) -> np.ndarray:  # [3, 2 * heads * PICK]
    """Per head a 2 * HEAD_ROWS-row extent (keys, then values); keys runs of every head, then
    values runs, destinations packed like GrpcStoreLink's [B, Hkv, M] buffer."""
    clusters = HEAD_ROWS // RUN_ROWS
    picks = np.stack([rng.choice(clusters, PICK, replace=False) for _ in range(heads)])
    keys = (np.arange(heads)[:, None] * 2 * HEAD_ROWS + picks * RUN_ROWS).reshape(-1)
    src = np.concatenate([keys, keys + HEAD_ROWS])
    k = heads * PICK
    dst = np.arange(2 * k) * RUN_ROWS
    return np.stack([src, dst, np.full(2 * k, RUN_ROWS)]).astype(np.int64)


def slab_table(runs: np.ndarray, bufs: list[np.ndarray]) -> tuple[int, np.ndarray]:
    """The arena runs over separate slabs: (base address, runs with rows counted from it)."""
    addresses = np.array([b.ctypes.data for b in bufs], np.int64)
    base = int(addresses.min())
    slab_rows = SLAB // ROW
    out = runs.copy()
    out[0] = (addresses[runs[0] // slab_rows] - base) // ROW + runs[0] % slab_rows
    return base, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--heads", type=int, default=128)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    span = args.heads * 2 * HEAD_ROWS * ROW
    layout = arena_runs(args.heads, rng)
    k = layout.shape[1]
    nbytes = k * RUN_ROWS * ROW
    out = torch.empty(k * RUN_ROWS, W, dtype=torch.int64, device="cuda")
    rows: list[dict] = []

    def add(name: str, address: int, pool_rows: int, runs: np.ndarray) -> None:
        src = torch.as_tensor(HostRows(address, pool_rows), device="cuda")
        t = torch.from_numpy(np.ascontiguousarray(runs)).cuda()  # [3, K] row-major
        ms = cuda_ms(lambda: gather_kernel.gather_runs(src, out, t[0], t[1], t[2], RUN_ROWS))
        rows.append({"layout": name, "ms": ms, "gb_per_s": nbytes / ms / 1e6})
        print(f"| {name} | {ms:.2f} | {nbytes / ms / 1e6:.1f} |", flush=True)

    print(f"{torch.cuda.get_device_name()}, {nbytes / 1e6:.1f} MB per call, {k} runs of 4 KiB")
    print("| layout | ms | GB/s |\n|---|---|---|")
    small_mem, small = mapping(1 << 30, "small")
    gib = (1 << 30) // ROW
    add("1 GiB pool, random", small.ctypes.data, gib, random_runs(k, gib, rng))
    big_mem, big = mapping(span, "big")
    g = f"{span >> 30} GiB"
    add(f"{g} pool, random", big.ctypes.data, span // ROW, random_runs(k, span // ROW, rng))
    add(f"{g} pool, arena layout", big.ctypes.data, span // ROW, layout)
    ordered = np.ascontiguousarray(layout[:, np.argsort(layout[0], kind="stable")])
    add(f"{g} pool, arena layout sorted by source", big.ctypes.data, span // ROW, ordered)
    slabs = [mapping(SLAB, f"slab{i}") for i in range(span // SLAB)]
    base, table = slab_table(layout, [b for _, b in slabs])
    add(f"{g} in 256 MiB slabs, arena layout", base, 1, table)
    base, table = slab_table(ordered, [b for _, b in slabs])
    add(f"{g} in 256 MiB slabs, sorted by source", base, 1, table)
    add("1 GiB pool, random (again)", small.ctypes.data, gib, random_runs(k, gib, rng))
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}))
    del small_mem, big_mem


if __name__ == "__main__":
    main()
