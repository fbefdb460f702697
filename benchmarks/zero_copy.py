"""Where the same-host gather's bandwidth ceiling comes from (CUDA only, no store involved).

`python -m benchmarks.zero_copy [--mb 154] [--out FILE]`

Moves the bytes of one 128K x 16 miss call (default 154 MB, 4 KiB runs = one cluster of 16 bf16
rows of head_dim 128) into device memory, from a 1 GiB host pool, several ways:
- zero-copy Triton run gather (client.gather_kernel) reading host memory over PCIe, from
  (a) torch pinned memory (cudaHostAlloc), (b) a /dev/shm file mapped and cudaHostRegister-ed
  like the store's slabs, (c) the same with MADV_HUGEPAGE asked for; runs contiguous or random;
- copy engine: one pinned -> device cudaMemcpy of the whole size (the PCIe baseline);
- staged: CPU row gather (torch index_select, all threads) into pinned memory, then one copy.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import time
from pathlib import Path

import numpy as np
import torch

from client import gather_kernel

ROW, RUN_ROWS, POOL = 256, 16, 1 << 30
W = ROW // 8


class HostRows:
    """Host memory at `address` seen as [rows, W] int64 (CUDA array interface)."""

    def __init__(self, address: int, rows: int) -> None:
        self.__cuda_array_interface__ = {
            "shape": (rows, W), "typestr": "<i8", "data": (address, False), "version": 3,
            "strides": None,
        }  # fmt: skip


def mapping(nbytes: int, tag: str, huge: bool = False) -> tuple[mmap.mmap, np.ndarray]:
    """A /dev/shm file of nbytes, mapped, touched and registered (portable|mapped|read-only)
    like the store's slabs; MADV_HUGEPAGE asked for when `huge`."""
    path = f"/dev/shm/wavekv-bench-{os.getpid()}-{tag}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, 0, nbytes)
        mem = mmap.mmap(fd, nbytes, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
        os.unlink(path)
    if huge and hasattr(mmap, "MADV_HUGEPAGE"):
        mem.madvise(mmap.MADV_HUGEPAGE)
    buf = np.frombuffer(mem, np.uint8)
    buf[::4096] = 1  # touch every page
    err = torch.cuda.cudart().cudaHostRegister(buf.ctypes.data, nbytes, 1 | 2 | 8)
    if int(err) != 0:
        raise RuntimeError(f"cudaHostRegister({nbytes}) failed: {int(err)}")
    return mem, buf


def runs(nbytes: int, random: bool, rng: np.random.Generator) -> np.ndarray:  # [3, K]
    k = nbytes // (ROW * RUN_ROWS)
    slots = POOL // (ROW * RUN_ROWS)
    src = (rng.choice(slots, k, replace=False) if random else np.arange(k)) * RUN_ROWS
    return np.stack([src, np.arange(k) * RUN_ROWS, np.full(k, RUN_ROWS)]).astype(np.int64)


def cuda_ms(fn, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mb", type=float, default=154.1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    nbytes = int(args.mb * 1e6) // (ROW * RUN_ROWS) * ROW * RUN_ROWS
    rng = np.random.default_rng(0)
    out = torch.empty(nbytes // 8, dtype=torch.int64, device="cuda").view(-1, W)
    pinned = torch.ones(POOL, dtype=torch.uint8).pin_memory()
    pools: dict[str, tuple[mmap.mmap | None, int]] = {"torch pinned": (None, pinned.data_ptr())}
    for name, huge in (("shm registered", False), ("shm registered, MADV_HUGEPAGE", True)):
        try:
            mem, buf = mapping(POOL, name.replace(" ", "").replace(",", "-"), huge)
            pools[name] = (mem, buf.ctypes.data)
        except (OSError, RuntimeError) as exc:
            print(f"{name}: unavailable ({exc})")
    rows = []

    def add(method: str, ms: float) -> None:
        rows.append({"method": method, "ms": ms, "gb_per_s": nbytes / ms / 1e6})
        print(f"| {method} | {ms:.2f} | {nbytes / ms / 1e6:.1f} |", flush=True)

    print(f"{torch.cuda.get_device_name()}, {nbytes / 1e6:.1f} MB per call\n| method | ms | GB/s |")
    for name, (_, address) in pools.items():
        src = torch.as_tensor(HostRows(address, POOL // ROW), device="cuda")
        for random in (False, True):
            t = torch.from_numpy(runs(nbytes, random, rng)).cuda()
            ms = cuda_ms(lambda t=t, s=src: gather_kernel.gather_runs(s, out, t[0], t[1], t[2], 16))
            add(f"zero-copy kernel, {name}, {'random' if random else 'contiguous'} 4 KiB runs", ms)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    add("copy engine, one pinned cudaMemcpy", cuda_ms(lambda: dev.copy_(pinned[:nbytes], True)))
    r = runs(nbytes, True, rng)
    idx = torch.from_numpy((r[0][:, None] + np.arange(RUN_ROWS)).reshape(-1))
    host = torch.from_numpy(np.frombuffer(pinned.numpy(), np.int64).reshape(-1, W))
    staging = torch.empty(nbytes // 8, dtype=torch.int64).pin_memory().view(-1, W)
    gather_ms = cuda_ms(lambda: torch.index_select(host, 0, idx, out=staging))
    add(f"CPU gather into pinned ({torch.get_num_threads()} threads)", gather_ms)
    add("staged: CPU gather + one copy", cuda_ms(
        lambda: (torch.index_select(host, 0, idx, out=staging), out.copy_(staging, True))
    ))  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}))


if __name__ == "__main__":
    main()
