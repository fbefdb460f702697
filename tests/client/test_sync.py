"""The blocking client against real stores: typed timeouts, retries that wait for a restarting
store within the call's deadline, the restart contract, background TTL renewal."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from client import (
    ClientOptions,
    ClusterSegment,
    FetchRequest,
    KVStoreClient,
    NotFoundError,
    SequenceGeometry,
    StoreNotReadyError,
    StoreRestartedError,
    UnavailableError,
)
from tests.store_fixtures import StoreProcess, make_segment

GEOMETRY = SequenceGeometry(1, 1, 16, "float32")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_wait_ready_honours_its_timeout_and_says_why() -> None:
    target = f"127.0.0.1:{_free_port()}"  # nothing listens there
    with KVStoreClient(target, ClientOptions(timeout_s=60)) as client:
        t0 = time.monotonic()
        with pytest.raises(StoreNotReadyError) as info:
            client.wait_ready(timeout_s=1.0)
        assert time.monotonic() - t0 < 10  # its own timeout, not the client's 60 s
        assert "not ready within timeout_s=1" in info.value.details and target in str(info.value)
        assert isinstance(info.value, TimeoutError)


@pytest.mark.slow
def test_calls_wait_for_a_restarting_store_and_a_lost_sequence_is_reported() -> None:
    store = StoreProcess().start()
    seg = make_segment(np.random.default_rng(0), 0, 0, 4, 16, "float32")
    try:
        with KVStoreClient(store.target, ClientOptions(namespace="r", timeout_s=60)) as client:
            client.create_sequence("s", GEOMETRY)
            client.put_segments("s", [seg])
            first = client.get_stats().incarnation_id
            store.kill()
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(client.list_sequences)  # sent while the store is down
                store.start()  # same port, new process: nothing survived
                assert pending.result(timeout=60) == []  # retried once the store was back
            assert client.get_stats().incarnation_id != first
            with pytest.raises(StoreRestartedError) as info:
                client.fetch_clusters([FetchRequest("s", 0, 0, [0])])
            assert info.value.sequence_ids == ("s",) and "restarted" in info.value.details
            with pytest.raises(NotFoundError) as other:  # never created by this client
                client.get_sequence("t")
            assert not isinstance(other.value, StoreRestartedError)
            client.create_sequence("s", GEOMETRY)  # created again: normal from here on
            client.put_segments("s", [seg])
            assert client.get_sequence("s").num_segments == 1
    finally:
        store.kill()


@pytest.mark.slow
def test_the_client_keeps_its_sequences_alive() -> None:
    store = StoreProcess("--sequence-ttl-s", "1.5").start()
    try:
        keep = KVStoreClient(store.target, ClientOptions(namespace="ttl"))
        drop = KVStoreClient(store.target, ClientOptions(namespace="ttl", renew_sequences=False))
        assert keep.create_sequence("kept", GEOMETRY).ttl_s == 1.5
        drop.create_sequence("dropped", GEOMETRY)
        assert store.wait_for_log("sequences expired")["count"] == 1
        assert [s.sequence_id for s in keep.list_sequences()] == ["kept"]
        assert keep.get_stats().rpcs["RenewSequences"].count >= 1
        keep.close()
        drop.close()
    finally:
        store.kill()


@pytest.mark.slow
def test_a_store_killed_mid_put_is_unavailable_and_stored_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = StoreProcess("--data-dir", str(tmp_path)).start()
    rng = np.random.default_rng(1)
    n = 100_000  # ~100 MB of K/V: still arriving when the store dies
    kv = rng.standard_normal((n, 128)).astype(np.float32)
    sizes = np.full(500, n // 500)
    seg = ClusterSegment(
        0,
        0,
        np.zeros((500, 128)),
        sizes,
        np.zeros((500, 128)),
        kv,
        kv,
        np.concatenate([[0], np.cumsum(sizes)]),
    )
    options = ClientOptions(namespace="p", timeout_s=60, put_chunk_bytes=64 << 10)
    try:
        with KVStoreClient(store.target, options) as client:
            client.create_sequence("s", SequenceGeometry(1, 1, 128, "float32"))
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(client.put_segments, "s", [seg])
                while client.get_stats().reserved_bytes == 0:  # the header is in
                    assert not pending.done(), pending.result()
                store.kill()
                with pytest.raises(UnavailableError):
                    pending.result(timeout=60)
            store.start()  # warm restart: the sequence is there, the put is not
            info = client.get_sequence("s")
            assert (info.num_segments, client.get_stats().reserved_bytes) == (0, 0)
    finally:
        store.kill()
