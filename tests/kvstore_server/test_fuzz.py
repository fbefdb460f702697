"""Property-based fuzz of every RPC (a bounded share of `python -m benchmarks.store_fuzz`):
no malformed request gets UNKNOWN or INTERNAL, the store never dies, known data is unchanged."""

from __future__ import annotations

import pytest

from benchmarks.store_fuzz import Fuzzer, known_data, run, seed_known
from client import ClientOptions, KVStoreClient
from tests.store_fixtures import StoreProcess

pytestmark = pytest.mark.slow
CASES = 2000


def test_malformed_requests_get_precise_statuses_and_change_nothing() -> None:
    store = StoreProcess("--capacity-bytes", "256MiB").start()
    try:
        with KVStoreClient(store.target, ClientOptions(namespace="fuzz")) as target:
            seed_known(target)
        with KVStoreClient(store.target, ClientOptions(namespace="known")) as known:
            before = seed_known(known)
            fuzzer = Fuzzer(store.target)
            run(fuzzer, CASES, seed=1)
            fuzzer.close()
            assert sum(fuzzer.codes.values()) == CASES
            assert not fuzzer.bad, fuzzer.bad[:5]
            assert store.proc is not None and store.proc.poll() is None
            assert list(known_data(known)) == before
    finally:
        store.kill()
