"""Miss-path bandwidth: shared memory + gather vs gRPC streaming vs a plain copy baseline.

`python -m benchmarks.miss_path [--contexts 32768 131072] [--batches 1 4 16]
 [--quick] [--profile PATH]`

One call = what a RetroInfer layer asks per decode step when every retrieved cluster misses:
B sequences x 8 KV heads x n_ret = round(0.018 C) clusters of 16 tokens (head_dim 128, bf16,
C = L / 16), packed into [B, 8, M, 128] keys and values on the compute device. The store runs as
a separate process on loopback (`python -m kvstore_server`, shared memory on). Systems, same run:
- shm local resolve: the SDK's DescriptorCache (whole-head layouts fetched once, ids resolved
  on the device, one gather launch, no RPC per call); the cache's lease renewal RPC is timed on
  its own row;
- shm: the same without the cache: one FetchDescriptors RPC + gather from the mapped arena
  (CUDA: registered pinned memory read by the Triton run gather over unified addressing);
- shm gather only: the gather of the same descriptors without the RPC (kernel bandwidth), per
  gather method, and (CUDA) the Triton kernel at several launch shapes;
- descriptor RPC only: FetchDescriptors + decode without any gather (the per-call fixed cost);
- grpc: one FetchClusters stream, packed on the host, copied;
- baseline: the same bytes as one contiguous copy (CUDA: pinned host -> device cudaMemcpy;
  CPU: a plain memcpy between two buffers).
Cluster ids are fresh random per call. The first call of each system is compared bit for bit.
Every system is an SDK call sequence (benchmarks/miss_sdk.py), the one the engine's store link
makes; the engine itself is not involved.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.miss_profile import profile_calls
from benchmarks.miss_sdk import SdkMisses
from benchmarks.store import device_name as cpu_name
from benchmarks.store import segments, start
from client import FetchRequest, KVStoreClient, SequenceGeometry, gather_kernel

log = logging.getLogger("benchmarks.miss_path")
KV_HEADS, HEAD_DIM, CLUSTER, RETRIEVAL = 8, 128, 16, 0.018
SWEEP = ((1024, 1), (2048, 2), (4096, 2), (4096, 4), (4096, 8))  # (tile bytes, warps)
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(slots=True)
class Row:
    context: int
    batch: int
    mb_per_call: float
    system: str
    mean_ms: float
    p50_ms: float
    gb_per_s: float  # payload (keys + values) bytes / mean time
    bit_exact: bool | None


def timed(fn, reps: int, device: torch.device) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.append(time.perf_counter() - t0)
    return out


def warm_up(fn, device: torch.device, seconds: float = 0.2) -> None:  # type: ignore[no-untyped-def]
    """Call `fn` for at least `seconds` (and twice): compiled, allocated, clocks up."""
    t0, calls = time.perf_counter(), 0
    while calls < 2 or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def row(context: int, batch: int, nbytes: int, system: str, lat: list[float], exact) -> Row:  # type: ignore[no-untyped-def]
    ms = np.asarray(lat) * 1e3
    return Row(
        context,
        batch,
        nbytes / 1e6,
        system,
        float(ms.mean()),
        float(np.median(ms)),
        nbytes / float(ms.mean()) / 1e6,
        exact,
    )


def populate(client: KVStoreClient, context: int, batch: int) -> list[str]:
    rng = np.random.default_rng(context)
    segs = [segments(rng, 0, h, context) for h in range(KV_HEADS)]
    ids = [f"ctx{context}-b{b}" for b in range(batch)]
    for sid in ids:
        client.create_sequence(sid, SequenceGeometry(1, KV_HEADS, HEAD_DIM, "bfloat16"))
        client.put_segments(sid, segs, timeout_s=600)
    return ids


def bench(
    target: str,
    context: int,
    batch: int,
    reps: int,
    device: torch.device,
    quick: bool = False,
    profile: Path | None = None,
) -> list[Row]:
    c = context // CLUSTER
    n_ret = max(round(RETRIEVAL * c), 1)
    max_tokens = n_ret * CLUSTER
    nbytes = 2 * batch * KV_HEADS * max_tokens * HEAD_DIM * 2
    shm = SdkMisses(target, "shm", HEAD_DIM, torch.bfloat16)
    local = SdkMisses(target, "local", HEAD_DIM, torch.bfloat16)
    grpc = SdkMisses(target, "grpc", HEAD_DIM, torch.bfloat16)
    try:
        ids = populate(shm.client, context, batch)
        gen = torch.Generator().manual_seed(batch)

        def pick() -> torch.Tensor:  # [B, Hkv, n] distinct random clusters per row
            return torch.rand(batch, KV_HEADS, c, generator=gen).argsort(-1)[..., :n_ret].to(device)

        first = pick()
        want = grpc.fetch(0, ids, first, max_tokens)
        exact = _same(shm.fetch(0, ids, first, max_tokens), want)
        local_exact = _same(local.fetch(0, ids, first, max_tokens), want)  # describes heads once
        rows = [
            row(context, batch, nbytes, "shm local resolve (whole call, no RPC)",
                _link(local, ids, pick, max_tokens, reps, device), local_exact),
            row(context, batch, nbytes, "lease renewal RPC (once per ~3.3 s)",
                _renewal(local, reps), None),
        ]  # fmt: skip
        if profile is not None:
            profile_calls(lambda c: local.fetch(0, ids, c, max_tokens), pick, device, profile)
        rows += (_quick if quick else _full)(shm, grpc, ids, pick, first, max_tokens, reps,
                                             device, context, batch, nbytes, exact)  # fmt: skip
        for sid in ids:
            shm.client.delete_sequence(sid)
        return rows
    finally:
        shm.close()
        local.close()
        grpc.close()


def _quick(shm, grpc, ids, pick, first, max_tokens, reps, device, context, batch, nbytes, exact):  # type: ignore[no-untyped-def]
    """The rows the local-resolve path is judged by: its kernel alone and the copy baseline."""
    return [
        *_kernel_only(shm, ids, pick(), max_tokens, reps, device, context, batch, nbytes),
        row(context, batch, nbytes, _baseline_name(device), _baseline(nbytes, reps, device),
            None),
    ]  # fmt: skip


def _full(shm, grpc, ids, pick, first, max_tokens, reps, device, context, batch, nbytes, exact):  # type: ignore[no-untyped-def]
    rows = [
        row(context, batch, nbytes, "shm (RPC + gather)", _link(shm, ids, pick, max_tokens,
                                                                reps, device), exact),
        *[
            row(context, batch, nbytes, f"shm gather only ({m})",
                _gather_only(shm, ids, pick(), max_tokens, reps, device, m), exact)
            for m in _methods(device)
        ],
        *_sweep(shm, ids, pick, max_tokens, reps, device, context, batch, nbytes),
        *_kernel_only(shm, ids, pick(), max_tokens, reps, device, context, batch, nbytes),
        row(context, batch, nbytes, "descriptor RPC only", _rpc_only(shm, ids, pick, reps),
            None),
        row(context, batch, nbytes, "grpc stream", _link(grpc, ids, pick, max_tokens,
                                                         max(reps // 3, 2), device), exact),
        row(context, batch, nbytes, _baseline_name(device), _baseline(nbytes, reps, device),
            None),
    ]  # fmt: skip
    return rows


def _same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    """Keys, values (as bits) and offsets identical."""
    bits = [(x.cpu().view(torch.int16) if x.is_floating_point() else x.cpu()) for x in (*a, *b)]
    return all(torch.equal(x, y) for x, y in zip(bits[:3], bits[3:], strict=True))


def _link(link: SdkMisses, ids, pick, max_tokens: int, reps: int, device) -> list[float]:  # type: ignore[no-untyped-def]
    picks = [pick() for _ in range(reps + 1)]
    warm_up(lambda: link.fetch(0, ids, picks[-1], max_tokens), device)
    it = iter(picks)
    return timed(lambda: link.fetch(0, ids, next(it), max_tokens), reps, device)


def _renewal(link: SdkMisses, reps: int) -> list[float]:
    """The descriptor cache's periodic lease renewal (one RPC over every cached head)."""
    cache = link.cache
    assert cache is not None
    return timed(cache.renew, reps, torch.device("cpu"))


def _gather_only(
    link: SdkMisses,
    ids,
    cluster_ids,
    max_tokens: int,
    reps: int,
    device,  # type: ignore[no-untyped-def]
    method: str,
):
    arena = link.arena
    assert arena is not None
    cpu = cluster_ids.cpu()
    b, h, _ = cpu.shape
    reqs = [FetchRequest(ids[i], 0, j, cpu[i, j]) for i in range(b) for j in range(h)]
    batch = link.client.fetch_descriptors(reqs, lease_ttl_s=60.0)
    slots = list(range(b * h))

    def run() -> None:
        arena.gather_packed(batch, slots, b * h, max_tokens, device, method)

    run()  # warm-up (registration, kernel compile)
    lat = timed(run, reps, device)
    arena.verify(batch)
    link.client.done_with_lease(batch.lease_id)
    return lat


def _sweep(link, ids, pick, max_tokens, reps, device, context, batch, nbytes) -> list[Row]:  # type: ignore[no-untyped-def]
    """The Triton gather at several launch shapes (CUDA only); the default is restored."""
    if device.type != "cuda":
        return []
    default, out = gather_kernel.CONFIG, []
    try:
        for tile, warps in SWEEP:
            gather_kernel.CONFIG = gather_kernel.GatherConfig(tile, warps)
            lat = _gather_only(link, ids, pick(), max_tokens, reps, device, "triton")
            name = f"shm gather only (triton, {tile} B tiles, {warps} warps)"
            out.append(row(context, batch, nbytes, name, lat, None))
    finally:
        gather_kernel.CONFIG = default
    return out


def _kernel_only(link, ids, cluster_ids, max_tokens, reps, device, context, batch, nbytes):  # type: ignore[no-untyped-def]
    """The Triton kernel alone on the real arena's run table (no table building, no
    staging, no zeroing), and the host work of building that table (CUDA only)."""
    if device.type != "cuda" or not gather_kernel.available(HEAD_DIM * 2 // 8):
        return []
    arena = link.arena
    cpu = cluster_ids.cpu()
    b, h, _ = cpu.shape
    reqs = [FetchRequest(ids[i], 0, j, cpu[i, j]) for i in range(b) for j in range(h)]
    descs = link.client.fetch_descriptors(reqs, lease_ttl_s=60.0)
    slots = np.arange(b * h, dtype=np.int64)
    half = b * h * max_tokens
    plan = arena.triton_plan(descs, slots, max_tokens, half, device)
    assert plan is not None
    src, table_np = plan
    flat = torch.zeros(2 * half, src.shape[1], dtype=src.dtype, device=device)
    table = torch.from_numpy(table_np).to(device)
    longest = int(table_np[2].max())

    def kernel() -> None:
        gather_kernel.gather_runs(src, flat, table[0], table[1], table[2], longest)

    kernel()
    lat = timed(kernel, reps, device)
    host = timed(lambda: arena.triton_plan(descs, slots, max_tokens, half, device), reps, device)
    arena.verify(descs)
    link.client.done_with_lease(descs.lease_id)
    return [
        row(context, batch, nbytes, "triton kernel only (real arena run table)", lat, None),
        row(context, batch, nbytes, "run table build only (host)", host, None),
    ]


def _rpc_only(link: SdkMisses, ids, pick, reps: int) -> list[float]:  # type: ignore[no-untyped-def]
    """FetchDescriptors + decode + lease bookkeeping: the fixed cost around a gather."""
    reqs = []
    for _ in range(reps + 1):
        cpu = pick().cpu()
        b, h, _ = cpu.shape
        reqs.append([FetchRequest(ids[i], 0, j, cpu[i, j]) for i in range(b) for j in range(h)])
    it = iter(reqs)

    def run() -> None:
        link.client.done_with_lease(link.client.fetch_descriptors(next(it)).lease_id)

    run()
    return timed(run, reps, torch.device("cpu"))


def _methods(device: torch.device) -> tuple[str, ...]:
    return ("triton", "index_select", "memcpy", "host") if device.type == "cuda" else ("host",)


def _baseline_name(device: torch.device) -> str:
    return "pinned cudaMemcpy H2D" if device.type == "cuda" else "plain memcpy"


def _baseline(nbytes: int, reps: int, device: torch.device) -> list[float]:
    if device.type == "cuda":
        src = torch.empty(nbytes, dtype=torch.uint8).pin_memory()
        dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    else:
        src = torch.ones(nbytes, dtype=torch.uint8)
        dst = torch.empty(nbytes, dtype=torch.uint8)
    dst.copy_(src, non_blocking=True)
    return timed(lambda: dst.copy_(src, non_blocking=True), reps, device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} + {cpu_name()}"
    return cpu_name()


def print_table(rows: list[Row], device: str) -> None:
    print(f"miss path, {device}")
    print("| context | batch | MB/call | system | mean ms | p50 ms | GB/s | bit-exact vs grpc |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        exact = "" if r.bit_exact is None else ("yes" if r.bit_exact else "NO")
        print(
            f"| {r.context // 1024}K | {r.batch} | {r.mb_per_call:.1f} | {r.system} | "
            f"{r.mean_ms:.2f} | {r.p50_ms:.2f} | {r.gb_per_s:.2f} | {exact} |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="only the local-resolve rows, the kernel alone and the copy baseline",
    )
    p.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write a torch.profiler table of local-resolve calls (largest point)",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    device = torch.device(args.device)
    name = device_name(device)
    cmd = [sys.executable, "-m", "kvstore_server", "--port", "0", "--log-format", "json"]
    store, doc = start([*cmd, "--log-level", "INFO"], "stderr")
    rows: list[Row] = []
    try:
        target = f"127.0.0.1:{doc['port']}"
        for context in args.contexts:
            for batch in args.batches:
                last = (context, batch) == (args.contexts[-1], args.batches[-1])
                prof = args.profile if last else None
                got = bench(target, context, batch, args.reps, device, args.quick, prof)
                rows += got
                print_table(got, name)
                _write(args.out or RESULTS / f"miss_path_{device.type}.json", name, rows)
    finally:
        store.terminate()
        store.wait(30)
    print_table(rows, name)
    log.warning("wrote %s", args.out or RESULTS / f"miss_path_{device.type}.json")


def _write(out: Path, device: str, rows: list[Row]) -> None:
    """After every point, so a run cut short keeps what it measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": device, "rows": [asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
