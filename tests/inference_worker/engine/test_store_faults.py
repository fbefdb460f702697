"""The store dies or restarts under a decoding request (issue 4, section 5)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import ClientOptions, KVStoreClient, KVStoreError, RetryPolicy, UnavailableError
from inference_worker.cluster_probes import wait_store_port
from inference_worker.engine import (
    EngineConfig,
    GenerationEngine,
    GenerationRequest,
    GrpcStoreLink,
    StoreRestartedError,
)
from tests.engine_fixtures import WatchingLink, essay_tokens

pytestmark = pytest.mark.slow

FAIL_WITHIN_S = 60.0  # "no hang": generous bound on how long a failing request may take


class StoreProcess:
    """`python -m kvstore_server` on 127.0.0.1 (a real separate process we can kill)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.port, self.proc = tmp, 0, None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        ready = self.tmp / f"ready-{self.starts}.json"
        cmd = [
            sys.executable,
            "-m",
            "kvstore_server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ready-file",
            str(ready),
            "--log-level",
            "WARNING",
        ]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        self.port = wait_store_port(ready, self.proc, 60.0)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def restart(self) -> None:
        self.kill()
        self.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreProcess]:
    proc = StoreProcess(tmp_path)
    proc.start()
    yield proc
    if proc.proc is not None and proc.proc.poll() is None:
        proc.kill()


def _client(target: str) -> KVStoreClient:
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.05, max_backoff_s=0.5)
    return KVStoreClient(target, ClientOptions(namespace="faults", timeout_s=5.0, retry=retry))


def _request(engine: GenerationEngine) -> GenerationRequest:
    return GenerationRequest("victim", essay_tokens(engine, 1200, seed=21), max_new_tokens=12)


def test_store_killed_mid_decode_fails_fast_and_worker_recovers(
    default_engine: GenerationEngine, store: StoreProcess
) -> None:
    link = WatchingLink(_client(store.target), hook_at=40, hook=store.kill)
    t0 = time.monotonic()
    with pytest.raises(KVStoreError) as failure:
        default_engine.with_config(EngineConfig(), link).generate([_request(default_engine)])
    assert time.monotonic() - t0 < FAIL_WITHIN_S
    assert isinstance(failure.value, UnavailableError), failure.value
    assert store.target in str(failure.value) or "unavailable" in str(failure.value).lower()
    store.start()  # same port, new incarnation
    client = _client(store.target)
    client.wait_ready(timeout_s=30.0)  # gRPC shares the old subchannel's reconnect backoff
    fresh = GrpcStoreLink(client)
    (result,) = default_engine.with_config(EngineConfig(), fresh).generate(
        [_request(default_engine)]
    )
    assert len(result.token_ids) == 12 and result.stats["store_fetch_rpcs"] > 0
    assert fresh.client.list_sequences() == []
    fresh.close()
    link.close()


def test_store_restart_mid_decode_is_survived_with_identical_output(
    default_engine: GenerationEngine, store: StoreProcess
) -> None:
    """kill -9 and restart of the store (everything lost) in the middle of decoding: the engine
    prefills the request again, replays its tokens and finishes it; greedy output identical to
    an undisturbed run, and the new store holds nothing of it afterwards."""
    calm = GrpcStoreLink(_client(store.target))
    (want,) = default_engine.with_config(EngineConfig(), calm).generate([_request(default_engine)])
    calm.close()
    link = WatchingLink(_client(store.target), hook_at=40, hook=store.restart)
    before = link.client.get_stats().incarnation_id
    (got,) = default_engine.with_config(EngineConfig(), link).generate([_request(default_engine)])
    assert link.fetches > 40, "the store was never restarted under the request"
    assert link.client.get_stats().incarnation_id != before
    assert got.token_ids == want.token_ids
    assert got.stats["store_recoveries"] == 1 and got.stats["finish_reason"] == "length"
    assert link.client.list_sequences() == []
    link.close()


def test_a_request_lost_too_often_fails_with_the_stores_error(
    default_engine: GenerationEngine, store: StoreProcess
) -> None:
    """Bounded retries: a store that restarts under every attempt fails the request (the
    error says the store lost it) after MAX_STORE_RECOVERIES recoveries."""
    from inference_worker.engine.engine import MAX_STORE_RECOVERIES

    link = WatchingLink(_client(store.target), hook_every=25, hook=store.restart)
    with pytest.raises((StoreRestartedError, KVStoreError)):
        default_engine.with_config(EngineConfig(), link).generate([_request(default_engine)])
    assert store.starts >= MAX_STORE_RECOVERIES + 2
    link.close()
