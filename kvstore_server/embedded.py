"""Run a real store server on a background thread (tests, demos, single-process use)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future

from kvstore_server.server import StoreServer
from kvstore_server.settings import ServerSettings


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class EmbeddedStore:
    """`with EmbeddedStore() as s: KVStoreClient(s.target)`; binds 127.0.0.1:0 by default."""

    def __init__(self, settings: ServerSettings | None = None) -> None:
        self.settings = settings or ServerSettings(port=0, log_format="text")
        self.server = StoreServer(self.settings)
        self._loop = new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="wavekv-store", daemon=True
        )

    @property
    def target(self) -> str:
        return f"{self.settings.host}:{self.server.port}"

    def start(self) -> EmbeddedStore:
        self._thread.start()
        self._run(self.server.start())
        return self

    def stop(self, grace_s: float = 0.0) -> None:
        if not self._thread.is_alive():
            return
        self._run(self.server.stop(grace_s))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, coro):  # type: ignore[no-untyped-def]
        fut: Future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result()

    def __enter__(self) -> EmbeddedStore:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
