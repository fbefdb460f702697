"""The compact FetchDescriptors forms and the vectorised gather planning against plain
references: packed vs per-entry replies, packed request validation, bad packed descriptors,
run tables, and the link across several slabs (one kernel launch on CUDA) vs streaming."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
import torch

from client import (
    BadDescriptorError,
    ClientOptions,
    FetchRequest,
    KVStoreClient,
    SequenceGeometry,
    wire,
)
from client.runs import merge_runs, runs
from client.shm import GATHER_METHODS
from inference_worker.engine.grpc_link import GrpcStoreLink
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings
from tests.store_fixtures import make_segment, unique_ids
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb

HEADS, DIM = 2, 64


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedStore]:
    settings = ServerSettings(
        port=0, log_format="text", log_level="WARNING", shared_memory="require",
        shm_slab_bytes=2 << 20,
    )  # fmt: skip
    with EmbeddedStore(settings) as s:
        yield s


@pytest.fixture
def namespace() -> str:
    return f"ns-{uuid.uuid4().hex[:8]}"


def _populate(client: KVStoreClient, rng: np.random.Generator, dtype: str) -> list[str]:
    """Two sequences whose heads (~1.7 MB each) land in different 2 MiB slabs."""
    ids = ["s0", "s1"]
    for sid in ids:
        client.create_sequence(sid, SequenceGeometry(1, HEADS, DIM, dtype))
        segs = [make_segment(rng, 0, h, 400, DIM, dtype, max_size=16) for h in range(HEADS)]
        client.put_segments(sid, segs)
    return ids


def _raw(client: KVStoreClient, req: pb.FetchDescriptorsRequest) -> pb.FetchDescriptorsResponse:
    shard = client._aio._shards[0]
    return shard.sync_stub().FetchDescriptors(req)


def test_packed_and_per_entry_replies_decode_identically(
    server: EmbeddedStore, namespace: str
) -> None:
    rng = np.random.default_rng(21)
    with KVStoreClient(
        server.target, ClientOptions(namespace=namespace, shared_memory="require")
    ) as client:
        ids = _populate(client, rng, "float32")
        arena = client.shared_arena()
        assert arena is not None
        reqs = [
            FetchRequest(sid, 0, h, unique_ids(rng, 400, (int(rng.integers(0, 9)),)))
            for sid in ids
            for h in range(HEADS)
        ]
        packed_req = wire.descriptor_request(namespace, reqs, _ids_of(reqs), 5.0, [])
        legacy_req = pb.FetchDescriptorsRequest(
            namespace=namespace,
            entries=wire.fetch_request(namespace, reqs, _ids_of(reqs)).entries,
            lease_ttl_s=5,
        )
        packed, legacy = _raw(client, packed_req), _raw(client, legacy_req)
        assert packed.HasField("packed") and not packed.entries and len(legacy.entries) == 4
        a, b = arena.decode(packed), arena.decode(legacy)
        for name in ("table", "bounds", "row_starts", "lens"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert len(set(a.table[a.entry_rows() > 0, 0].tolist())) > 1  # several slabs
        for x, y in zip(a.entries, legacy.entries, strict=True):
            assert x.generation == y.generation and x.extent_offset == y.extent_offset
            assert (
                x.cluster_offsets.tolist()
                == np.frombuffer(y.cluster_offsets.data, np.int64).tolist()
            )
        client._aio._shards[0].sync_stub().ReleaseLeases(
            pb.ReleaseLeasesRequest(
                lease_ids=[packed.lease_id, legacy.lease_id], namespace=namespace
            )
        )


def test_packed_request_errors_name_the_field(server: EmbeddedStore, namespace: str) -> None:
    rng = np.random.default_rng(22)
    with KVStoreClient(
        server.target, ClientOptions(namespace=namespace, shared_memory="require")
    ) as client:
        ids = _populate(client, rng, "float16")
        good = wire.descriptor_request(
            namespace, [FetchRequest(ids[0], 0, 1, [3, 4])], [np.array([3, 4])], 1.0, []
        )
        cases = {
            "counts sum to 3": dict(counts=np.array([3], np.int64).tobytes()),
            "packed_entries.layers: 2 values": dict(layers=[0, 0]),
            "cluster_ids: 12 bytes": dict(cluster_ids=b"\0" * 12),
        }
        for message, change in cases.items():
            req = pb.FetchDescriptorsRequest()
            req.CopyFrom(good)
            for name, value in change.items():
                field = getattr(req.packed_entries, name)
                if isinstance(value, list):
                    field.extend(value[len(field) :])
                else:
                    setattr(req.packed_entries, name, value)
            with pytest.raises(grpc.RpcError) as err:
                _raw(client, req)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (err.value.details() or ""), err.value.details()
        both = pb.FetchDescriptorsRequest()
        both.CopyFrom(good)
        both.entries.add(sequence_id=ids[0])
        with pytest.raises(grpc.RpcError, match="not both"):
            _raw(client, both)
        assert _raw(client, good).HasField("packed")  # the store is still fine


def test_bad_packed_descriptors_are_rejected(server: EmbeddedStore, namespace: str) -> None:
    rng = np.random.default_rng(23)
    with KVStoreClient(
        server.target, ClientOptions(namespace=namespace, shared_memory="require")
    ) as client:
        ids = _populate(client, rng, "bfloat16")
        arena = client.shared_arena()
        assert arena is not None
        reqs = [FetchRequest(ids[1], 0, h, [1, 2, 399]) for h in range(HEADS)]
        good = _raw(client, wire.descriptor_request(namespace, reqs, _ids_of(reqs), 1.0, []))

        def bad(**fields: bytes) -> pb.FetchDescriptorsResponse:
            msg = pb.FetchDescriptorsResponse()
            msg.CopyFrom(good)
            for name, value in fields.items():
                setattr(msg.packed, name, value)
            return msg

        table = np.frombuffer(good.packed.table, np.int64).reshape(-1, 9).copy()
        far = table.copy()
        far[1, 4] = arena.slab(int(far[1, 0])).size - far[1, 6]  # keys run past the slab
        lens = np.frombuffer(good.packed.lens, np.int64).copy()
        lens[4] = -1
        with pytest.raises(BadDescriptorError, match=r"packed\.table"):
            arena.decode(bad(table=good.packed.table[:-8]))
        with pytest.raises(BadDescriptorError, match=r"entries\[1\]\.keys_offset"):
            arena.decode(bad(table=far.tobytes()))
        with pytest.raises(BadDescriptorError, match=r"entries\[1\]: negative"):
            arena.decode(bad(lens=lens.tobytes()))
        with pytest.raises(BadDescriptorError, match=r"packed\.counts"):
            arena.decode(bad(counts=np.array([3, 2], np.int64).tobytes()))
        assert arena.decode(good).entry_rows().sum() > 0


def test_run_tables_match_plain_loops(server: EmbeddedStore, namespace: str) -> None:
    rng = np.random.default_rng(24)
    with KVStoreClient(
        server.target, ClientOptions(namespace=namespace, shared_memory="require")
    ) as client:
        ids = _populate(client, rng, "float32")
        arena = client.shared_arena()
        assert arena is not None
        reqs = [
            FetchRequest(sid, 0, h, unique_ids(rng, 400, (6,))) for sid in ids for h in range(HEADS)
        ]
        batch = client.fetch_descriptors(reqs)
        slots = np.array([3, 0, 2, 1])
        got = dict(runs(batch, slots, 200, 10_000))
        want: dict[int, list[tuple[int, int, int]]] = {}
        for i, d in enumerate(batch.entries):
            for key in (True, False):
                for c in range(len(d.row_starts)):
                    start = (d.keys_row if key else d.values_row) + int(d.row_starts[c])
                    dst = int(slots[i]) * 200 + int(d.cluster_offsets[c]) + (0 if key else 10_000)
                    n = int(d.cluster_offsets[c + 1] - d.cluster_offsets[c])
                    want.setdefault(d.slab, []).append((start, dst, n))
        assert sorted(got) == sorted(want)
        for slab, table in got.items():
            assert sorted(map(tuple, table.T.tolist())) == sorted(want[slab])
        shift = {slab: 1000 * slab + 7 for slab in want}  # one table across slabs (CUDA path)
        ((_, one),) = runs(batch, slots, 200, 10_000, batch.table[:, 0] * 1000 + 7)
        assert sorted(map(tuple, one.T.tolist())) == sorted(
            (s + shift[slab], d, n) for slab, rows in want.items() for s, d, n in rows
        )
        client.done_with_lease(batch.lease_id)
    plain = np.array([[0, 5, 9, 20, 23], [100, 105, 50, 60, 63], [5, 4, 0, 3, 2]])
    assert merge_runs(plain).T.tolist() == [[0, 100, 9], [20, 60, 5]]


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_link_across_slabs_matches_streaming(
    server: EmbeddedStore, namespace: str, dtype: str
) -> None:
    rng = np.random.default_rng(25)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shm = GrpcStoreLink(KVStoreClient(server.target, ClientOptions(namespace=namespace)), "require")
    stream = GrpcStoreLink(KVStoreClient(server.target, ClientOptions(namespace=namespace)), "off")
    try:
        ids = _populate(shm.client, rng, dtype)
        for link in (shm, stream):
            link._head_dim, link._dtype = DIM, getattr(torch, dtype)
        cluster_ids = torch.from_numpy(unique_ids(rng, 400, (2, HEADS, 7)))  # [B, Hkv, n]
        cluster_ids[0, 1, 2] = -1  # padding inside a row
        cluster_ids[1, 0] = -1  # a row with nothing to fetch
        want = stream.fetch(0, ids, cluster_ids, 7 * 16)
        methods = GATHER_METHODS if device.type == "cuda" else ("auto",)
        arena = shm._arena
        assert arena is not None
        for method in methods:
            original = arena.gather_packed
            arena.gather_packed = (  # type: ignore[method-assign]
                lambda *a, m=method, f=original, **k: f(*a, method=m, **k)
            )
            try:
                got = shm.fetch(0, ids, cluster_ids.to(device), 7 * 16)
            finally:
                arena.gather_packed = original  # type: ignore[method-assign]
            assert got.keys.device.type == device.type, method
            for name in ("keys", "values"):
                a, b = getattr(got, name).cpu(), getattr(want, name)
                assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), (method, name)
            assert torch.equal(got.offsets.cpu(), want.offsets), method
    finally:
        shm.close()
        stream.close()


def _ids_of(requests: list[FetchRequest]) -> list[np.ndarray]:
    return [np.asarray(r.cluster_ids, np.int64).reshape(-1) for r in requests]
