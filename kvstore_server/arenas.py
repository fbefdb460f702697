"""The store's arenas: one shared-memory arena per namespace (tenant isolation), or one private
heap for all when shared memory is off or unavailable."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator

from kvstore_server.arena import ArenaConfig, HeapArena, SharedArena, remove_stale_slabs
from kvstore_server.errors import ResourceExhausted
from kvstore_server.slab import Fallocate, Slab

log = logging.getLogger("kvstore_server.arena")


class Arenas:
    """namespace -> arena. Shared arenas are created on first use (GetArena or a put) and keep
    their arena id as long as the store; an empty one holds no file once its identity slab is
    closed by the sweep."""

    def __init__(
        self,
        mode: str,
        config: ArenaConfig,
        max_namespaces: int = 4096,
        clock: Callable[[], float] = time.monotonic,
        fallocate: Fallocate = os.posix_fallocate,
    ) -> None:
        self.config = config
        self.max_namespaces = max_namespaces
        self._clock = clock
        self._fallocate = fallocate
        self._shared: dict[str, SharedArena] = {}
        self._heap = HeapArena()
        self.shared = mode != "off" and _usable(mode, config, fallocate)
        if self.shared:
            removed = remove_stale_slabs(config.directory)
            if removed:
                log.info("removed stale slab files", extra={"count": removed})

    def get(self, namespace: str, arena_id: str | None = None) -> HeapArena | SharedArena:
        """The namespace's arena, created if needed (ResourceExhausted past max_namespaces)."""
        if not self.shared:
            return self._heap
        arena = self._shared.get(namespace)
        if arena is None:
            if len(self._shared) >= self.max_namespaces:
                raise ResourceExhausted(
                    f"max_namespaces={self.max_namespaces} namespaces already have an arena"
                )
            arena = SharedArena(self.config, arena_id, self._clock, self._fallocate)
            self._shared[namespace] = arena
        arena.open_identity()
        return arena

    def close_idle_identities(self, min_age_s: float) -> int:
        """Remove the identity slab of every arena that holds nothing (see SharedArena)."""
        return sum(a.close_identity_if_idle(min_age_s) for a in self._shared.values())

    def find(self, namespace: str) -> SharedArena | None:
        return self._shared.get(namespace)

    def items(self) -> Iterator[tuple[str, SharedArena]]:
        return iter(list(self._shared.items()))

    def allocated_bytes(self, namespace: str) -> int:
        arena = self._shared.get(namespace)
        return arena.allocated_bytes if arena is not None else 0

    def close(self, unlink: bool = True) -> None:
        for arena in self._shared.values():
            arena.close(unlink)
        self._shared.clear()


def _usable(mode: str, config: ArenaConfig, fallocate: Fallocate) -> bool:
    """Can slab files be created in the directory? "require" raises the OSError."""
    try:
        if not config.directory.is_dir():
            raise OSError(f"shared-memory directory {str(config.directory)!r} does not exist")
        probe = config.directory / f"wavekv-probe-{os.getpid()}-{secrets.token_hex(4)}"
        Slab.create(0, probe, 2 << 20, "0" * 32, fallocate)
        probe.unlink()
    except OSError as exc:
        if mode == "require":
            raise
        log.warning("shared memory unavailable, K/V stays private", extra={"error": str(exc)})
        return False
    return True
