"""Consistent hashing of sequence ids onto store targets (virtual nodes on a 64-bit ring)."""

from __future__ import annotations

import bisect
import hashlib

VIRTUAL_NODES = 128


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    def __init__(self, targets: list[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        if not targets:
            raise ValueError("targets is empty")
        if len(set(targets)) != len(targets):
            raise ValueError(f"targets={targets} has duplicates")
        points = sorted(
            (_hash(f"{t}#{v}"), i) for i, t in enumerate(targets) for v in range(virtual_nodes)
        )
        self._keys = [p for p, _ in points]
        self._owners = [i for _, i in points]
        self.targets = list(targets)

    def shard_of(self, sequence_id: str) -> int:
        """Index into targets of the store that owns sequence_id."""
        pos = bisect.bisect(self._keys, _hash(sequence_id)) % len(self._keys)
        return self._owners[pos]
