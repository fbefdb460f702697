"""Fuzz the store: malformed requests over every RPC, against `python -m kvstore_server`.

`python -m benchmarks.store_fuzz [--requests 20000] [--seed 0]`

Requests are drawn by Hypothesis strategies: random bytes for each method, well-formed messages
with random field values (names with control characters or 100 KB long, unknown enum values,
negative and huge shapes, byte lengths that do not match, NaN TTLs, ...), and PutSegments streams
built from a valid segment with one field broken, cut short or overrun. A well-formed baseline
(create, put, search, fetch, delete) runs in the same process first. Passes when no answer is
UNKNOWN or INTERNAL, the store never dies, and the data stored before the fuzz (namespace
"known", never deleted by it) is bit-identical afterwards. Prints a table of status codes and
writes benchmarks/results/store_fuzz_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = {m.name: m for m in pb.DESCRIPTOR.services_by_name["KVStore"].methods}
ALLOWED = {
    "OK",
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "FAILED_PRECONDITION",
    "RESOURCE_EXHAUSTED",
    "PERMISSION_DENIED",
    "OUT_OF_RANGE",
}
KNOWN_NS, FUZZ_NS = "known", "fuzz"
HEAD_DIM, CLUSTERS = 8, 6


@dataclass(slots=True)
class Case:
    """One request: a method and its raw request bytes (a list for PutSegments streams)."""

    method: str
    payload: bytes | list[bytes]
    kind: str  # what was malformed, for the table


def _uint32() -> st.SearchStrategy[int]:
    """Mostly in the seeded sequences' range [0, 2), sometimes anywhere."""
    return st.integers(0, 1) | st.integers(0, 1) | st.integers(0, 4) | st.integers(0, 2**32 - 1)


def _names() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from([FUZZ_NS, "s", "t", ""]),
        st.text(max_size=12),
        st.text(alphabet="\x00\n\x7f\x9f", min_size=1, max_size=3),
        st.integers(257, 100_000).map(lambda n: "x" * n),
    )


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    shape = draw(
        st.lists(st.one_of(st.integers(-2, 9), st.integers(-(2**63), 2**63 - 1)), max_size=3)
    )
    dtype = draw(st.one_of(st.integers(0, 5), st.integers(-(2**31), 2**31 - 1)))
    numel = math.prod(shape) if all(0 <= s < 64 for s in shape) else draw(st.integers(0, 64))
    nbytes = draw(st.sampled_from([numel * 4, numel * 8, numel * 2, 0, numel * 4 + 1]))
    data = draw(st.binary(min_size=nbytes, max_size=nbytes))
    return pb.Tensor(dtype=dtype, shape=shape, data=data)  # type: ignore[arg-type]


@st.composite
def ids_tensors(draw: st.DrawFn) -> pb.Tensor:
    """int64 cluster ids, well-formed, values anywhere (repeats, negatives, out of range)."""
    ids = draw(
        st.lists(st.one_of(st.integers(-2, 8), st.integers(-(2**63), 2**63 - 1)), max_size=6)
    )
    return _valid_tensor(np.array(ids, np.int64), pb.DTYPE_INT64)


@st.composite
def query_tensors(draw: st.DrawFn) -> pb.Tensor:
    """float32 queries [G, D], well-formed, any values (NaN and inf included), D near 8."""
    g, d = draw(st.integers(0, 3)), draw(st.sampled_from([HEAD_DIM, HEAD_DIM - 1, 0]))
    values = draw(st.lists(st.floats(width=32), min_size=g * d, max_size=g * d))
    return _valid_tensor(np.array(values, np.float32).reshape(g, d), pb.DTYPE_FLOAT32)


def _valid_tensor(arr: np.ndarray, dtype: int) -> pb.Tensor:
    return pb.Tensor(dtype=dtype, shape=arr.shape, data=arr.tobytes())  # type: ignore[arg-type]


def _good_header(namespace: str, sid: str, rows: int) -> pb.SegmentHeader:
    sizes = np.full(CLUSTERS, rows // CLUSTERS, np.int64)
    sizes[-1] += rows - int(sizes.sum())
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    meta = np.ones((CLUSTERS, HEAD_DIM), np.float32)
    kv = pb.Tensor(dtype=pb.DTYPE_FLOAT32, shape=[rows, HEAD_DIM])
    return pb.SegmentHeader(
        namespace=namespace,
        sequence_id=sid,
        layer=0,
        kv_head=0,
        centroids=_valid_tensor(meta, pb.DTYPE_FLOAT32),
        sizes=_valid_tensor(sizes, pb.DTYPE_INT64),
        value_sums=_valid_tensor(meta, pb.DTYPE_FLOAT32),
        offsets=_valid_tensor(offsets, pb.DTYPE_INT64),
        keys=kv,
        values=kv,
    )


@st.composite
def put_streams(draw: st.DrawFn) -> Case:
    ns = draw(st.sampled_from([FUZZ_NS, KNOWN_NS]) | _names())
    rows = draw(st.integers(CLUSTERS, 40))
    header = _good_header(ns, draw(st.sampled_from(["s", "t"]) | _names()), rows)
    broken = draw(st.sampled_from(["none", "layer", "kv_head", "tensor", "namespace_change"]))
    if broken in ("layer", "kv_head"):
        setattr(header, broken, draw(_uint32()))
    elif broken == "tensor":
        name = draw(st.sampled_from(["centroids", "sizes", "value_sums", "offsets", "keys"]))
        getattr(header, name).CopyFrom(draw(tensors()))
    payload = 2 * rows * HEAD_DIM * 4
    cut = draw(st.sampled_from([payload, payload // 2, payload + 8, 0]))
    data = b"\x01" * cut
    msgs = [pb.PutSegmentsRequest(header=header)]
    step = draw(st.integers(1, max(cut, 1)))
    msgs += [
        pb.PutSegmentsRequest(data=pb.SegmentData(data=data[i : i + step]))
        for i in range(0, cut, step)
    ]
    if broken == "namespace_change":
        other = pb.SegmentHeader()
        other.CopyFrom(header)
        other.namespace = draw(_names())
        msgs.append(pb.PutSegmentsRequest(header=other))
    if draw(st.booleans()):
        msgs.insert(draw(st.integers(0, len(msgs))), pb.PutSegmentsRequest())  # kind unset
    kind = f"PutSegments/{broken}/{'complete' if cut == payload else 'cut'}"
    return Case("PutSegments", [m.SerializeToString() for m in msgs], kind)


@st.composite
def messages(draw: st.DrawFn) -> Case:
    """A well-formed message of a random unary or server-streaming method, fields at random."""
    method = draw(st.sampled_from(sorted(set(METHODS) - {"PutSegments"})))
    ns = draw(st.just(FUZZ_NS) | st.sampled_from([FUZZ_NS, KNOWN_NS]) | _names())
    sid = draw(st.just("s") | st.sampled_from(["s", "t"]) | _names())
    if method == "DeleteSequence" and ns == KNOWN_NS:
        ns = FUZZ_NS  # the known data must survive: the fuzz never deletes it
    msg: Any = getattr(pb, METHODS[method].input_type.name)()
    if hasattr(msg, "namespace"):
        msg.namespace = ns
    if hasattr(msg, "sequence_id"):
        msg.sequence_id = sid
    if method == "CreateSequence":
        g = msg.geometry
        g.num_layers, g.num_kv_heads, g.head_dim = (draw(_uint32()) for _ in range(3))
        g.dtype = draw(st.integers(0, 7))
    elif method in ("SearchClusters", "FetchClusters", "FetchDescriptors"):
        for _ in range(draw(st.integers(0, 3))):
            entry = msg.entries.add()
            entry.sequence_id, entry.layer, entry.kv_head = sid, draw(_uint32()), draw(_uint32())
            good = query_tensors() if method == "SearchClusters" else ids_tensors()
            getattr(entry, "queries" if method == "SearchClusters" else "cluster_ids").CopyFrom(
                draw(st.one_of(good, good, tensors()))
            )
        if method == "SearchClusters":
            msg.k = draw(st.one_of(st.integers(-1, 8), st.integers(-(2**63), 2**63 - 1)))
            msg.scoring = draw(st.integers(0, 5))
        if method == "FetchDescriptors":
            msg.lease_ttl_s = draw(st.floats(allow_nan=True, allow_infinity=True))
            msg.whole_heads, msg.packed_reply = draw(st.booleans()), draw(st.booleans())
            msg.release_leases.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=3)))
            if draw(st.booleans()):
                p = msg.packed_entries
                p.sequence_ids.extend(draw(st.lists(_names(), max_size=3)))
                p.layers.extend(draw(st.lists(_uint32(), max_size=3)))
                p.kv_heads.extend(draw(st.lists(_uint32(), max_size=3)))
                p.counts, p.cluster_ids = draw(st.binary(max_size=24)), draw(st.binary(max_size=40))
    elif method in ("RenewSequences",):
        msg.sequence_ids.extend(draw(st.lists(_names(), max_size=4)))
    elif method == "ReleaseLeases":
        msg.lease_ids.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=4)))
    return Case(method, msg.SerializeToString(), f"{method}/fields")


@st.composite
def raw_bytes(draw: st.DrawFn) -> Case:
    method = draw(st.sampled_from(sorted(METHODS)))
    blob = draw(st.binary(max_size=64))
    payload: bytes | list[bytes] = (
        [blob, draw(st.binary(max_size=16))] if method == "PutSegments" else blob
    )
    return Case(method, payload, f"{method}/bytes")


def cases() -> st.SearchStrategy[Case]:
    return st.one_of(raw_bytes(), messages(), put_streams())


@dataclass(slots=True)
class Fuzzer:
    """Sends cases over one channel and counts the answers."""

    target: str
    timeout_s: float = 30.0
    codes: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    bad: list[tuple[str, str, str]] = field(default_factory=list)  # (kind, code, details)
    channel: grpc.Channel | None = None

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(self.target)

    def send(self, case: Case) -> str:
        assert self.channel is not None
        path = f"/wavekv.v1.KVStore/{case.method}"
        method = METHODS[case.method]
        try:
            if method.client_streaming:
                assert isinstance(case.payload, list)
                call = self.channel.stream_unary(path, None, None)
                call(iter(case.payload), timeout=self.timeout_s)
            elif method.server_streaming:
                for _ in self.channel.unary_stream(path, None, None)(
                    case.payload, timeout=self.timeout_s
                ):
                    pass
            else:
                self.channel.unary_unary(path, None, None)(case.payload, timeout=self.timeout_s)
            code, details = "OK", ""
        except grpc.RpcError as exc:
            code, details = exc.code().name, exc.details() or ""
        self.codes[code] += 1
        self.by_kind.setdefault(case.kind.split("/")[0], Counter())[code] += 1
        if code not in ALLOWED:
            self.bad.append((case.kind, code, details[:300]))
        return code

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()


def run(
    fuzzer: Fuzzer, n: int, seed: int, strategy: Callable[[], st.SearchStrategy[Case]] = cases
) -> None:
    """Send n cases drawn by Hypothesis (no shrinking: every answer is counted)."""

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy())
    def one(case: Case) -> None:
        fuzzer.send(case)

    one._hypothesis_internal_use_seed = seed  # type: ignore[attr-defined]
    one()


def baseline(client: Any, counts: Counter[str]) -> None:
    """Well-formed calls through the SDK (all must succeed)."""
    from client import ClusterSegment, FetchRequest, SearchQuery, SequenceGeometry

    rng = np.random.default_rng(0)
    for i in range(50):
        sid = f"base-{i}"
        client.create_sequence(sid, SequenceGeometry(1, 1, HEAD_DIM, "float32"))
        sizes = np.full(CLUSTERS, 3)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        kv = rng.standard_normal((3 * CLUSTERS, HEAD_DIM)).astype(np.float32)
        meta = rng.standard_normal((CLUSTERS, HEAD_DIM)).astype(np.float32)
        client.put_segments(sid, [ClusterSegment(0, 0, meta, sizes, meta, kv, kv, offsets)])
        client.search_clusters([SearchQuery(sid, 0, 0, meta[:2])], k=3)
        client.fetch_clusters([FetchRequest(sid, 0, 0, [0, 5])])
        client.delete_sequence(sid)
        counts["OK"] += 5


def known_data(client: Any) -> Iterator[bytes]:
    """Every byte a reader can get of the known sequence's original clusters."""
    from client import FetchRequest

    info = client.get_sequence("s")
    (got,) = client.fetch_clusters([FetchRequest("s", 0, 0, np.arange(CLUSTERS))])
    yield np.asarray(got.keys).tobytes()
    yield np.asarray(got.values).tobytes()
    yield np.asarray(got.offsets).tobytes()
    yield f"{info.num_clusters >= CLUSTERS} {info.geometry}".encode()


def seed_known(client: Any) -> list[bytes]:
    """Sequence "s" with one segment at (layer 0, kv_head 0) in the client's namespace (the
    fuzz namespace gets one too, so fuzzed reads get past NOT_FOUND); its readable bytes."""
    from client import ClusterSegment, SequenceGeometry

    rng = np.random.default_rng(42)
    client.create_sequence("s", SequenceGeometry(2, 2, HEAD_DIM, "float32"))
    sizes = rng.integers(1, 6, CLUSTERS)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    keys = rng.standard_normal((n, HEAD_DIM)).astype(np.float32)
    values = rng.standard_normal((n, HEAD_DIM)).astype(np.float32)
    meta = rng.standard_normal((CLUSTERS, HEAD_DIM)).astype(np.float32)
    client.put_segments("s", [ClusterSegment(0, 0, meta, sizes, meta, keys, values, offsets)])
    return list(known_data(client))


def main() -> None:
    from benchmarks.store import device_name
    from client import ClientOptions, KVStoreClient
    from tests.store_fixtures import StoreProcess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    store = StoreProcess("--capacity-bytes", "256MiB").start()
    t0 = time.perf_counter()
    try:
        with KVStoreClient(store.target, ClientOptions(namespace=FUZZ_NS)) as target:
            seed_known(target)
        with KVStoreClient(store.target, ClientOptions(namespace=KNOWN_NS)) as known:
            before = seed_known(known)
            base: Counter[str] = Counter()
            with KVStoreClient(store.target, ClientOptions(namespace="baseline")) as client:
                baseline(client, base)
            fuzzer = Fuzzer(store.target)
            run(fuzzer, args.requests, args.seed)
            fuzzer.close()
            alive = store.proc is not None and store.proc.poll() is None
            intact = list(known_data(known)) == before
    finally:
        store.kill()
    seconds = time.perf_counter() - t0
    total = sum(fuzzer.codes.values())
    device = device_name()
    print(f"store fuzz on {device}: {total} malformed requests in {seconds:.1f} s")
    print(f"{'method':<18} " + " ".join(f"{c[:12]:>12}" for c in sorted(fuzzer.codes)))
    for method, counts in sorted(fuzzer.by_kind.items()):
        print(f"{method:<18} " + " ".join(f"{counts.get(c, 0):>12}" for c in sorted(fuzzer.codes)))
    print(f"baseline (well-formed calls): {dict(base)}")
    print(
        f"UNKNOWN {fuzzer.codes['UNKNOWN']}, INTERNAL {fuzzer.codes['INTERNAL']}, "
        f"other disallowed {len(fuzzer.bad)}, store alive {alive}, known data intact {intact}"
    )
    for kind, code, details in fuzzer.bad[:20]:
        print(f"  {code} on {kind}: {details}")
    doc = {
        "benchmark": "benchmarks.store_fuzz",
        "device": device,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "seed": args.seed,
        "requests": total,
        "seconds": round(seconds, 1),
        "codes": dict(fuzzer.codes),
        "by_method": {m: dict(c) for m, c in sorted(fuzzer.by_kind.items())},
        "disallowed": [list(b) for b in fuzzer.bad[:100]],
        "baseline": dict(base),
        "store_alive": alive,
        "known_data_intact": intact,
        "load_average_1m": os.getloadavg()[0],
    }
    out = args.out or RESULTS / "store_fuzz_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    if fuzzer.bad or not alive or not intact:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
