"""Load on the store: N clients x T seconds of create / put / search / fetch / delete.

`python -m benchmarks.store_load [--clients 64] [--seconds 60]`

`python -m kvstore_server` runs as its own process (shared memory on, as deployed); the clients
are AsyncKVStoreClients on one event loop in this process, spread over 8 namespaces, half of them
reading through the same-host shared-memory path and half streaming. Each client loops: create a
sequence, put 4 heads of a random size (256-4096 tokens, head_dim 64, bf16), search each head,
fetch 16 clusters of each head, delete the sequence. Baseline in the same run: one client alone
for a sixth of the time. Reports throughput, p50/p99 per operation, errors, and the store's RSS
and slab bytes in /dev/shm at start (after one warm-up iteration, which loads the code every RPC
touches; the cold RSS is reported too), at peak and after everything was deleted. Writes
benchmarks/results/store_load_<device>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import numpy as np

from benchmarks.store import device_name, start
from client import (
    AsyncKVStoreClient,
    ClientOptions,
    ClusterSegment,
    FetchRequest,
    SearchQuery,
    SequenceGeometry,
)

RESULTS = Path(__file__).resolve().parent / "results"
HEADS, HEAD_DIM, CLUSTER = 4, 64, 16
GEOMETRY = SequenceGeometry(1, HEADS, HEAD_DIM, "bfloat16")
OPS = ("create", "put", "search", "fetch", "delete")
SETTLE_S = 12.0  # after the last delete: leases released, the sweep has run (every 5 s)


@dataclass(slots=True)
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    error_samples: list[str] = field(default_factory=list)
    bytes_put: int = 0
    bytes_fetched: int = 0

    def timed(self, op: str, t0: float) -> None:
        self.latencies[op].append(time.perf_counter() - t0)

    def failed(self, op: str, exc: BaseException) -> None:
        self.errors[op] += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(f"{op}: {type(exc).__name__}: {exc}"[:300])


def _segments(rng: np.random.Generator, tokens: int) -> list[ClusterSegment]:
    c = tokens // CLUSTER
    out = []
    for head in range(HEADS):
        kv = rng.integers(0, 1 << 16, (2, tokens, HEAD_DIM), dtype=np.uint16)  # bf16 bits
        centroids = rng.standard_normal((c, HEAD_DIM), dtype=np.float32)
        sizes = np.full(c, CLUSTER)
        offsets = np.arange(c + 1) * CLUSTER
        out.append(ClusterSegment(0, head, centroids, sizes, centroids, kv[0], kv[1], offsets))
    return out


async def one_client(
    target: str, index: int, until: float, stats: Stats, shared_memory: str
) -> int:
    """Loop create/put/search/fetch/delete until `until`; returns the iterations done."""
    rng = np.random.default_rng(index)
    options = ClientOptions(
        namespace=f"load-{index % 8}", timeout_s=120, shared_memory=shared_memory
    )
    done = 0
    async with AsyncKVStoreClient(target, options) as client:
        await client.wait_ready(timeout_s=60)
        while time.monotonic() < until or not done:
            sid = f"c{index}-{done}"
            segs = _segments(rng, int(rng.integers(256, 4097)) // CLUSTER * CLUSTER)
            c = len(segs[0].sizes)
            searches = [SearchQuery(sid, 0, h, segs[h].centroids[:4]) for h in range(HEADS)]
            fetches = [FetchRequest(sid, 0, h, rng.permutation(c)[:16]) for h in range(HEADS)]
            steps = (
                ("create", partial(client.create_sequence, sid, GEOMETRY)),
                ("put", partial(client.put_segments, sid, segs)),
                ("search", partial(client.search_clusters, searches, 8)),
                ("fetch", partial(client.fetch_clusters, fetches)),
                ("delete", partial(client.delete_sequence, sid)),
            )
            for op, call in steps:
                t0 = time.perf_counter()
                try:
                    await call()
                except Exception as exc:
                    stats.failed(op, exc)
                    continue
                stats.timed(op, t0)
            stats.bytes_put += sum(2 * s.keys.nbytes for s in segs)
            stats.bytes_fetched += HEADS * 16 * CLUSTER * 2 * HEAD_DIM * 2
            done += 1
    return done


async def run_clients(target: str, clients: int, seconds: float) -> tuple[Stats, int, float]:
    stats = Stats()
    t0 = time.monotonic()
    until = t0 + seconds
    modes = ("auto", "off")
    done = await asyncio.gather(
        *(one_client(target, i, until, stats, modes[i % 2]) for i in range(clients))
    )
    return stats, sum(done), time.monotonic() - t0


class Probe:
    """The store's memory: RSS (from /proc) and its slab files' bytes (st_blocks), sampled."""

    def __init__(self, pid: int, shm_dir: Path = Path("/dev/shm")) -> None:
        self.pid, self.shm_dir = pid, shm_dir
        self.peak_rss = self.peak_shm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def rss(self) -> dict[str, int]:
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
        return out

    def shm_bytes(self) -> int:
        total = 0
        for path in self.shm_dir.glob(f"wavekv-{self.pid}-*"):
            try:
                total += path.stat().st_blocks * 512
            except FileNotFoundError:
                continue
        return total

    def devshm_used(self) -> int:
        s = os.statvfs(self.shm_dir)
        return (s.f_blocks - s.f_bfree) * s.f_frsize

    def snapshot(self) -> dict[str, int]:
        return {**self.rss(), "slab_bytes": self.shm_bytes(), "devshm_used": self.devshm_used()}

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            self.peak_rss = max(self.peak_rss, self.rss()["VmRSS"])
            self.peak_shm = max(self.peak_shm, self.shm_bytes())

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def summarize(stats: Stats, iterations: int, seconds: float) -> dict:
    ops = {}
    for op in OPS:
        lat = np.array(stats.latencies.get(op, [0.0])) * 1e3
        ops[op] = {
            "count": len(stats.latencies.get(op, [])),
            "per_s": len(stats.latencies.get(op, [])) / seconds,
            "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)),
            "errors": stats.errors.get(op, 0),
        }
    return {
        "iterations": iterations,
        "seconds": seconds,
        "errors": sum(stats.errors.values()),
        "error_samples": stats.error_samples,
        "put_mb_per_s": stats.bytes_put / seconds / 1e6,
        "fetch_mb_per_s": stats.bytes_fetched / seconds / 1e6,
        "ops": ops,
    }


def print_table(name: str, s: dict) -> None:
    print(
        f"{name}: {s['iterations']} iterations in {s['seconds']:.1f} s, errors {s['errors']}, "
        f"put {s['put_mb_per_s']:.1f} MB/s, fetch {s['fetch_mb_per_s']:.1f} MB/s"
    )
    print(f"  {'op':<8} {'count':>8} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for op, row in s["ops"].items():
        print(
            f"  {op:<8} {row['count']:>8} {row['per_s']:>8.1f} {row['p50_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['errors']:>7}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cmd = [sys.executable, "-m", "kvstore_server", "--port", "0", "--shared-memory", "auto"]
    store, doc = start(cmd, "stderr")
    target = f"127.0.0.1:{doc['port']}"
    probe = Probe(store.pid)
    try:
        cold_mem = probe.snapshot()
        asyncio.run(run_clients(target, 1, 0.0))  # one iteration: first use of every RPC
        start_mem = probe.snapshot()
        with probe:
            alone = asyncio.run(run_clients(target, 1, max(args.seconds / 6, 5.0)))
            loaded = asyncio.run(run_clients(target, args.clients, args.seconds))
            time.sleep(SETTLE_S)  # leases released at client close; the sweep trims memory
            end_mem = probe.snapshot()
    finally:
        store.terminate()
        store.wait()
    baseline, load = summarize(*alone), summarize(*loaded)
    device = device_name()
    print(f"store load on {device}, load average {os.getloadavg()[0]:.1f}")
    print_table("baseline: 1 client", baseline)
    print_table(f"load: {args.clients} clients", load)
    rss_ratio = end_mem["VmRSS"] / start_mem["VmRSS"]
    print(
        f"store RSS {cold_mem['VmRSS'] / 2**20:.1f} MiB cold, "
        f"{start_mem['VmRSS'] / 2**20:.1f} MiB at start (after one warm-up iteration), "
        f"{probe.peak_rss / 2**20:.1f} MiB peak, {end_mem['VmRSS'] / 2**20:.1f} MiB after all "
        f"deletes ({(rss_ratio - 1) * 100:+.1f}%); slab bytes in /dev/shm "
        f"{start_mem['slab_bytes']} at start, {probe.peak_shm} peak, {end_mem['slab_bytes']} after"
    )
    result = {
        "benchmark": "benchmarks.store_load",
        "device": device,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "clients": args.clients,
        "seconds": args.seconds,
        "namespaces": 8,
        "shape": {"heads": HEADS, "head_dim": HEAD_DIM, "dtype": "bfloat16", "tokens": [256, 4096]},
        "baseline_one_client": baseline,
        "load": load,
        "memory": {
            "cold": cold_mem,
            "start": start_mem,
            "peak": {"VmRSS": probe.peak_rss, "slab_bytes": probe.peak_shm},
            "after_deletes": end_mem,
            "rss_after_over_start": rss_ratio,
            "slab_bytes_back_to_start": end_mem["slab_bytes"] == start_mem["slab_bytes"],
        },
        "load_average_1m": os.getloadavg()[0],
    }
    out = args.out or RESULTS / "store_load_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
