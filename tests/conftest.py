"""Shared fixtures: a real store server on 127.0.0.1:0 (in-process thread) and SDK clients."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from client import ClientOptions, KVStoreClient
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings

_namespaces = itertools.count()


@pytest.fixture(scope="module")
def store_server() -> Iterator[EmbeddedStore]:
    """A real gRPC store bound to 127.0.0.1 on a free port for the test module."""
    server = EmbeddedStore(
        ServerSettings(host="127.0.0.1", port=0, log_format="text", log_level="WARNING")
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def namespace() -> str:
    """A fresh tenant per test so tests sharing a server never see each other's data."""
    return f"test-{next(_namespaces)}"


@pytest.fixture
def store_client(store_server: EmbeddedStore, namespace: str) -> Iterator[KVStoreClient]:
    with KVStoreClient(
        store_server.target, ClientOptions(namespace=namespace, timeout_s=30.0)
    ) as client:
        client.wait_ready()
        yield client


@pytest.fixture(scope="session")
def default_engine():  # type: ignore[no-untyped-def]
    """The real default model (SmolLM2-135M) in a GenerationEngine, loaded once per session."""
    from inference_worker.engine import GenerationEngine

    return GenerationEngine.load()
