"""Warm restart with --data-dir: kill -9 the store, start it again, every acknowledged segment is
back (same bytes, cluster ids and search results); what was not acknowledged is not."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from client import (
    ClientOptions,
    ClusterSegment,
    FetchRequest,
    KVStoreClient,
    SearchQuery,
    SequenceGeometry,
    StoreRestartedError,
)
from kvstore_server.journal import read_records
from kvstore_server.persistence import JOURNAL_FILE, STATE_FILE
from tests.store_fixtures import StoreProcess, make_segment
from wavekv_proto.codec import encode
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb
from wavekv_proto.wavekv.v1 import kvstore_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
GEOMETRY = SequenceGeometry(2, 2, 32, "bfloat16")


def _client(store: StoreProcess, namespace: str = "w", **kw: object) -> KVStoreClient:
    client = KVStoreClient(store.target, ClientOptions(namespace=namespace, timeout_s=30, **kw))  # type: ignore[arg-type]
    client.wait_ready()
    return client


def _fill(client: KVStoreClient, rng: np.random.Generator) -> dict[str, list[ClusterSegment]]:
    """Three sequences, heads with several appended segments; one more created and deleted."""
    stored: dict[str, list[ClusterSegment]] = {}
    for name in ("a", "b", "c", "gone"):
        client.create_sequence(name, GEOMETRY)
        for round_ in range(3):
            segs = [
                make_segment(rng, layer, head, int(rng.integers(5, 40)), 32, "bfloat16")
                for layer in range(2)
                for head in range(2)
                if (layer + head + round_) % 2 == 0 or round_ == 0
            ]
            client.put_segments(name, segs)
            stored.setdefault(name, []).extend(segs)
    client.delete_sequence("gone")
    del stored["gone"]
    return stored


Counts = dict[tuple[str, int, int], int]


def _counts(stored: dict[str, list[ClusterSegment]]) -> Counts:
    out: Counts = {}
    for sid, segs in stored.items():
        for seg in segs:
            key = (sid, seg.layer, seg.kv_head)
            out[key] = out.get(key, 0) + len(seg.sizes)
    return out


def _snapshot(client: KVStoreClient, counts: Counts, queries: np.ndarray) -> dict:
    """Everything a reader can observe: infos, every cluster's K/V, top-k for fixed queries."""
    out: dict = {"infos": {}, "kv": {}, "search": {}}
    for info in client.list_sequences():
        out["infos"][info.sequence_id] = (
            info.num_clusters,
            info.num_segments,
            info.num_tokens,
            info.bytes_used,
            info.incarnation_id,
        )
    for (sid, layer, head), n in counts.items():
        (got,) = client.fetch_clusters([FetchRequest(sid, layer, head, np.arange(n))])
        out["kv"][(sid, layer, head)] = (got.keys.clone(), got.values.clone())
        (hit,) = client.search_clusters([SearchQuery(sid, layer, head, queries)], k=min(5, n))
        out["search"][(sid, layer, head)] = (hit.cluster_ids.tolist(), hit.scores.tolist())
    return out


def _same(a: dict, b: dict) -> None:
    assert a["infos"] == b["infos"]
    assert a["search"] == b["search"]
    assert a["kv"].keys() == b["kv"].keys()
    for key, (k, v) in a["kv"].items():
        k2, v2 = b["kv"][key]
        assert torch.equal(k, k2) and torch.equal(v.view(torch.int16), v2.view(torch.int16)), key


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    path = Path("/dev/shm") / f"wavekv-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("slabs_in_shm", [False, True])
def test_kill9_warm_restart_reattaches_every_acknowledged_segment(
    tmp_path: Path, shm_dir: Path, slabs_in_shm: bool
) -> None:
    rng = np.random.default_rng(7)
    args = ["--data-dir", str(tmp_path / "data")]
    if slabs_in_shm:
        args += ["--shm-dir", str(shm_dir)]
    store = StoreProcess(*args).start()
    queries = rng.standard_normal((3, 32)).astype(np.float32)
    blocker = threading.Event()
    try:
        with _client(store) as client:
            counts = _counts(_fill(client, rng))
            before = _snapshot(client, counts, queries)
            _unacknowledged_put(store, "a", blocker)  # a stream still open when the store dies
        store.kill()
        store.start()
        recovered = store.logged("recovered")[-1]
        assert recovered["sequences"] == 3 and recovered["dropped_sequences"] == 0
        assert recovered["kept_incarnation"]
        with _client(store) as client:
            _same(before, _snapshot(client, counts, queries))
            seg = make_segment(rng, 0, 0, 4, 32, "bfloat16")  # appends continue the ids
            assert client.put_segments("a", [seg]) == [counts[("a", 0, 0)]]
        with _client(store, shared_memory="require") as same_host, _client(store) as stream:
            request = [FetchRequest("b", 1, 1, [0, 2])]
            (got,), (want,) = same_host.fetch_clusters(request), stream.fetch_clusters(request)
            assert same_host.shared_arena() is not None and int(got.offsets[-1]) > 0
            assert torch.equal(got.keys, want.keys) and torch.equal(got.values, want.values)
    finally:
        blocker.set()
        store.kill()


def _unacknowledged_put(store: StoreProcess, sid: str, blocker: threading.Event) -> None:
    """Send a segment header and part of its data on a raw stream, and leave it open."""
    seg = make_segment(np.random.default_rng(0), 1, 0, 8, 32, "bfloat16")
    header = pb.PutSegmentsRequest(
        header=pb.SegmentHeader(
            namespace="w",
            sequence_id=sid,
            layer=1,
            kv_head=0,
            centroids=encode(seg.centroids),
            sizes=encode(np.asarray(seg.sizes)),
            value_sums=encode(seg.value_sums),
            offsets=encode(seg.offsets),
            keys=encode(seg.keys, with_data=False),
            values=encode(seg.values, with_data=False),
        )
    )

    def stream() -> Iterator[pb.PutSegmentsRequest]:
        yield header
        yield pb.PutSegmentsRequest(data=pb.SegmentData(data=b"\0" * 64))
        blocker.wait()  # the stream stays open until the test ends

    stub = pb_grpc.KVStoreStub(grpc.insecure_channel(store.target))
    call = stub.PutSegments.future(stream())
    del call


def _fake_reboot(data_dir: Path) -> None:
    """What a reboot looks like to the store: another boot id (the page cache is gone too,
    which a test cannot do; records past the last checkpoint are therefore distrusted)."""
    state_path = data_dir / STATE_FILE
    state = json.loads(state_path.read_text())
    state["boot_id"] = "another-boot"
    state_path.write_text(json.dumps(state))


def test_after_a_reboot_only_checkpointed_records_are_trusted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = StoreProcess("--data-dir", str(data), "--fsync", "no").start()
    rng = np.random.default_rng(3)
    seg_a = make_segment(rng, 0, 0, 6, 32, "bfloat16")
    try:
        with _client(store) as client:
            client.create_sequence("a", GEOMETRY)
            client.put_segments("a", [seg_a])
        assert store.stop() == 0  # a clean stop compacts: the journal ends in a checkpoint
        store.start()
        first = store.serving["incarnation_id"]
        client = _client(store)
        client.create_sequence("b", GEOMETRY)
        client.put_segments("b", [make_segment(rng, 0, 0, 6, 32, "bfloat16")])
        store.kill()  # b was acknowledged after the last checkpoint
        _fake_reboot(data)
        store.start()
        recovered = store.logged("recovered")[-1]
        assert recovered["rebooted"] and recovered["untrusted_records"] > 0
        assert not recovered["kept_incarnation"] and store.serving["incarnation_id"] != first
        with pytest.raises(StoreRestartedError) as info:  # b is gone: this client created it
            client.fetch_clusters([FetchRequest("b", 0, 0, [0])])
        assert info.value.old_incarnation == first and info.value.sequence_ids == ("b",)
        (got,) = client.fetch_clusters([FetchRequest("a", 0, 0, np.arange(6))])  # a survived
        assert torch.equal(got.keys, seg_a.keys)
        client.create_sequence("b", GEOMETRY)  # created again: usable from here on
        assert client.list_sequences()[1].sequence_id == "b"
        client.close()
    finally:
        store.kill()


def test_fsync_always_survives_a_reboot_and_a_torn_tail(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = StoreProcess("--data-dir", str(data), "--fsync", "always").start()
    seg = make_segment(np.random.default_rng(4), 1, 1, 9, 32, "bfloat16")
    try:
        with _client(store) as client:
            client.create_sequence("a", GEOMETRY)
            client.put_segments("a", [seg])
        first = store.serving["incarnation_id"]
        store.kill()
        _fake_reboot(data)
        journal = data / JOURNAL_FILE
        records, good = read_records(journal)
        with journal.open("ab") as f:  # a record torn by the crash
            f.write(b"\x40\x00\x00\x00garbage")
        assert read_records(journal) == (records, good)
        store.start()
        assert store.logged("recovered")[-1]["kept_incarnation"]
        assert store.serving["incarnation_id"] == first
        with _client(store) as client:
            (got,) = client.fetch_clusters([FetchRequest("a", 1, 1, np.arange(9))])
            assert torch.equal(got.keys, seg.keys) and torch.equal(got.values, seg.values)
    finally:
        store.kill()


def test_kill9_mid_fetch_then_the_retried_fetch_is_served_by_the_restarted_store(
    tmp_path: Path,
) -> None:
    store = StoreProcess("--data-dir", str(tmp_path / "data"), "--fetch-chunk-bytes", "64KiB")
    store.start()
    # ~10 MB: more than HTTP/2 flow control lets the store push before the client reads
    seg = make_segment(np.random.default_rng(5), 0, 0, 4000, 32, "bfloat16", max_size=40)
    n = len(seg.sizes)
    try:
        with _client(store) as client:
            client.create_sequence("s", GEOMETRY)
            client.put_segments("s", [seg])
            request = pb.FetchClustersRequest(
                namespace="w",
                entries=[pb.FetchEntry(sequence_id="s", cluster_ids=encode(np.arange(n)))],
            )
            with grpc.insecure_channel(store.target) as channel:
                stream = pb_grpc.KVStoreStub(channel).FetchClusters(request)
                next(stream)  # the header: the store is streaming
                store.kill()
                with pytest.raises(grpc.RpcError) as info:
                    list(stream)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            with ThreadPoolExecutor(1) as pool:  # the SDK call waits for the store
                pending = pool.submit(
                    client.fetch_clusters, [FetchRequest("s", 0, 0, np.arange(n))]
                )
                store.start()
                (got,) = pending.result(timeout=60)
            assert torch.equal(got.keys, seg.keys) and torch.equal(got.values, seg.values)
    finally:
        store.kill()
