"""Store benchmark: SearchClusters and FetchClusters for one decode step of an 8B GQA model.

`python -m benchmarks.store [--contexts 32768 131072] [--steps 3]`

Model shape: 32 layers x 8 KV heads x head_dim 128, bf16, GQA group 4, clusters of 16 tokens
(C = L/16 per head), n_ret = round(0.018 C) clusters retrieved per head (1.8% of tokens).
One decode step = 32 calls (one per layer), each carrying all 8 KV heads. The store and the
raw grpc.aio bytes baseline run as separate server processes on loopback; the same run measures
both with the same request/response byte sizes. To bound RAM, K/V for 2 layers are stored and
layer l reads stored layer l % 2 (payload sizes are those of the full model).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np
import torch

from benchmarks.raw_server import HEADER, MAX_MESSAGE_BYTES
from client import (
    AsyncKVStoreClient,
    ClientOptions,
    ClusterSegment,
    FetchRequest,
    SearchQuery,
    SequenceGeometry,
)
from client.wire import fetch_request, search_request

log = logging.getLogger("benchmarks.store")
LAYERS, KV_HEADS, HEAD_DIM, GROUP, CLUSTER = 32, 8, 128, 4, 16
STORED_LAYERS = 2
RETRIEVAL = 0.018
CHUNK = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(slots=True)
class Row:
    context: int
    op: str  # "search" | "fetch"
    system: str  # "store" | "raw"
    calls: int
    bytes_per_call: int
    mean_ms: float
    p50_ms: float
    p99_ms: float
    calls_per_s: float
    queries_per_s: float  # search: (layer, kv_head) query groups per second
    gb_per_s: float  # fetch: payload GB/s


def device_name() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} cores ({platform.machine()})"


def start(cmd: list[str], ready_stream: str) -> tuple[subprocess.Popen, dict]:
    """Start a server process and block on its readiness line (JSON with a port)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stream = proc.stdout if ready_stream == "stdout" else proc.stderr
    assert stream is not None
    for line in stream:
        doc = json.loads(line)
        if "port" in doc:
            threading.Thread(
                target=lambda: [None for _ in stream], daemon=True
            ).start()  # keep draining
            return proc, doc
    raise RuntimeError(f"{cmd} exited with {proc.wait()} before reporting a port")


def segments(rng: np.random.Generator, layer: int, head: int, context: int) -> ClusterSegment:
    c = context // CLUSTER
    kv = torch.from_numpy(rng.integers(-(1 << 15), 1 << 15, (2, context, HEAD_DIM), dtype=np.int16))
    kv = kv.view(torch.bfloat16)  # random bit patterns: bit-exactness is what matters
    return ClusterSegment(
        layer,
        head,
        centroids=rng.standard_normal((c, HEAD_DIM), dtype=np.float32),
        sizes=np.full(c, CLUSTER),
        value_sums=rng.standard_normal((c, HEAD_DIM), dtype=np.float32),
        keys=kv[0],
        values=kv[1],
        offsets=np.arange(c + 1, dtype=np.int64) * CLUSTER,
    )


def summarize(
    context: int, op: str, system: str, lat_s: list[float], nbytes: int, groups: int
) -> Row:
    lat = np.asarray(lat_s) * 1e3
    total_s = float(np.sum(lat_s))
    return Row(
        context,
        op,
        system,
        len(lat_s),
        nbytes,
        float(lat.mean()),
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        len(lat_s) / total_s,
        len(lat_s) * groups / total_s,
        len(lat_s) * nbytes / total_s / 1e9,
    )


async def timed(fn, calls: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def bench_context(store_target: str, raw_target: str, context: int, steps: int) -> list[Row]:
    rng = np.random.default_rng(context)
    c = context // CLUSTER
    n_ret = max(round(RETRIEVAL * c), 1)
    seq = f"ctx{context}"
    async with AsyncKVStoreClient(
        store_target, ClientOptions(namespace="bench", timeout_s=120)
    ) as client:
        await client.wait_ready()
        await client.create_sequence(seq, SequenceGeometry(LAYERS, KV_HEADS, HEAD_DIM, "bfloat16"))
        for layer in range(STORED_LAYERS):
            await client.put_segments(
                seq, [segments(rng, layer, h, context) for h in range(KV_HEADS)]
            )
        searches = [
            [
                SearchQuery(
                    seq, la % STORED_LAYERS, h, rng.standard_normal((GROUP, HEAD_DIM), np.float32)
                )
                for h in range(KV_HEADS)
            ]
            for la in range(LAYERS)
        ]
        fetches = [
            [
                FetchRequest(seq, la % STORED_LAYERS, h, rng.choice(c, n_ret, replace=False))
                for h in range(KV_HEADS)
            ]
            for la in range(LAYERS)
        ]
        search_out = await client.search_clusters(searches[0], n_ret)
        fetched = await client.fetch_clusters(fetches[0])
        payload = sum(f.keys.numel() * 2 * 2 for f in fetched)
        queries = [np.asarray(q.queries, np.float32) for q in searches[0]]
        search_req = search_request("bench", searches[0], queries, n_ret, "gqa_softmax").ByteSize()
        search_resp = sum(r.cluster_ids.numel() * 12 + 40 for r in search_out)
        ids = [np.asarray(f.cluster_ids, np.int64) for f in fetches[0]]
        fetch_req = fetch_request("bench", fetches[0], ids).ByteSize()
        layer_it = iter(range(1 << 30))

        async def store_search() -> None:
            await client.search_clusters(searches[next(layer_it) % LAYERS], n_ret)

        async def store_fetch() -> None:
            await client.fetch_clusters(fetches[next(layer_it) % LAYERS])

        calls = steps * LAYERS
        rows = []
        async with grpc.aio.insecure_channel(
            raw_target,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        ) as channel:
            echo = channel.unary_unary("/raw.Raw/Echo", None, None)
            stream = channel.unary_stream("/raw.Raw/Stream", None, None)
            echo_req = HEADER.pack(search_resp, 0) + bytes(max(search_req - HEADER.size, 0))
            stream_req = HEADER.pack(payload, CHUNK) + bytes(max(fetch_req - HEADER.size, 0))

            async def raw_search() -> None:
                await echo(echo_req)

            async def raw_fetch() -> None:
                buf = np.empty(payload, np.uint8)
                view, off = buf.data, 0
                async for chunk in stream(stream_req):
                    view[off : off + len(chunk)] = chunk
                    off += len(chunk)

            for op, fns, nbytes in (
                ("search", (store_search, raw_search), search_req + search_resp),
                ("fetch", (store_fetch, raw_fetch), payload),
            ):
                for fn in fns:
                    await timed(fn, LAYERS)  # warm-up: one decode step
                lat: dict[str, list[float]] = {"store": [], "raw": []}
                for _ in range(steps * LAYERS):  # alternate calls: both see the same machine load
                    for system, fn in zip(("store", "raw"), fns, strict=True):
                        lat[system] += await timed(fn, 1)
                for system in ("store", "raw"):
                    rows.append(summarize(context, op, system, lat[system], nbytes, KV_HEADS))
        await client.delete_sequence(seq)
    log.info(
        "context %d: C=%d n_ret=%d fetch payload %.2f MB per layer",
        context,
        c,
        n_ret,
        payload / 1e6,
    )
    assert calls == len(lat["store"])
    return rows


def overheads(store: Row, raw: Row) -> tuple[float, float]:
    """Store latency over raw latency, minus 1: (by mean, by median)."""
    return store.mean_ms / raw.mean_ms - 1, store.p50_ms / raw.p50_ms - 1


def print_table(rows: list[Row], device: str) -> None:
    print(
        f"\nWaveKV store benchmark on {device}: 8B GQA decode step (32 layers x 8 KV heads, bf16)"
    )
    print(
        f"{'context':>8} {'op':>6} {'system':>6} {'KB/call':>9} {'mean ms':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} "
        f"{'queries/s':>10} {'GB/s':>6} {'overhead mean / p50':>20}"
    )
    raw = {(r.context, r.op): r for r in rows if r.system == "raw"}
    for r in rows:
        base = raw[(r.context, r.op)]
        overhead = ""
        if r.system == "store":
            mean, p50 = overheads(r, base)
            overhead = f"{mean * 100:+.0f}% / {p50 * 100:+.0f}%"
        print(
            f"{r.context:>8} {r.op:>6} {r.system:>6} {r.bytes_per_call / 1e3:>9.1f} "
            f"{r.mean_ms:>8.3f} {r.p50_ms:>7.3f} {r.p99_ms:>7.3f} {r.queries_per_s:>10.0f} "
            f"{r.gb_per_s:>6.2f} {overhead:>20}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[32768, 131072])
    parser.add_argument(
        "--steps", type=int, default=3, help="decode steps (x32 layer calls) per measurement"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "store.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    store, store_doc = start(
        [sys.executable, "-m", "kvstore_server", "--port", "0", "--log-format", "json"], "stderr"
    )
    raw, raw_doc = start([sys.executable, "-m", "benchmarks.raw_server"], "stdout")
    try:
        rows = []
        for context in args.contexts:
            rows += asyncio.run(
                bench_context(
                    f"127.0.0.1:{store_doc['port']}",
                    f"127.0.0.1:{raw_doc['port']}",
                    context,
                    args.steps,
                )
            )
    finally:
        for proc in (store, raw):
            proc.terminate()
            proc.wait()
    device = device_name()
    print_table(rows, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "benchmarks.store",
        "device": device,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "model": {
            "layers": LAYERS,
            "kv_heads": KV_HEADS,
            "head_dim": HEAD_DIM,
            "dtype": "bfloat16",
            "gqa_group": GROUP,
            "cluster_size": CLUSTER,
            "retrieval_budget": RETRIEVAL,
        },
        "overhead_vs_raw": {
            f"{s.op}@{s.context}": dict(zip(("mean", "p50"), overheads(s, r), strict=True))
            for s in rows
            if s.system == "store"
            for r in rows
            if r.system == "raw" and (r.op, r.context) == (s.op, s.context)
        },
        "load_average_1m": os.getloadavg()[0],
        "stored_layers": STORED_LAYERS,
        "steps": args.steps,
        "rows": [asdict(r) for r in rows],
    }
    args.out.write_text(json.dumps(doc, indent=2))
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
