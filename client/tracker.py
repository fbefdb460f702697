"""What a client knows of the sequences it created: geometry (to check inputs before sending),
the store incarnation they were created under (to tell a restarted store from a missing
sequence) and the TTL to renew them within.

Restart contract: a call that names a sequence this client created and gets NOT_FOUND from a
store whose incarnation id differs from the one the sequence was created under raises
`StoreRestartedError` (a NotFoundError) instead, every time, until the sequence is created again
or deleted. A warm restart that kept the incarnation raises nothing: the sequence is still there.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from client.errors import KVStoreError, NotFoundError, StoreRestartedError
from client.types import SequenceGeometry, SequenceInfo


@dataclass(slots=True)
class Known:
    geometry: SequenceGeometry
    incarnation: str
    ttl_s: float


class SequenceTracker:
    def __init__(self) -> None:
        self._known: dict[str, Known] = {}

    def created(self, info: SequenceInfo) -> None:
        self._known[info.sequence_id] = Known(info.geometry, info.incarnation_id, info.ttl_s)

    def forget(self, sequence_id: str) -> None:
        self._known.pop(sequence_id, None)

    def geometry(self, sequence_id: str) -> SequenceGeometry | None:
        known = self._known.get(sequence_id)
        return known.geometry if known is not None else None

    def renewable(self) -> list[str]:
        return [sid for sid, k in self._known.items() if k.ttl_s > 0]

    def renew_every_s(self) -> float | None:
        """A third of the shortest TTL of the sequences to keep alive (None: nothing to do)."""
        ttls = [k.ttl_s for k in self._known.values() if k.ttl_s > 0]
        return min(ttls) / 3 if ttls else None

    def restarted(self, err: KVStoreError, sequence_ids: Iterable[str]) -> KVStoreError:
        """`err`, or a StoreRestartedError when it is a NOT_FOUND from a new incarnation that
        lost sequences this client created."""
        now = err.incarnation
        if not isinstance(err, NotFoundError) or not now:
            return err
        lost = sorted(
            {s for s in sequence_ids if s in self._known and self._known[s].incarnation != now}
        )
        if not lost:
            return err
        old = self._known[lost[0]].incarnation
        shown = ", ".join(repr(s) for s in lost[:4]) + (", ..." if len(lost) > 4 else "")
        return StoreRestartedError(
            f"the store restarted (incarnation {old} -> {now}) and lost {len(lost)} sequence(s) "
            f"this client created ({shown}): create them again ({err.details})",
            err.target,
            old,
            now,
            lost,
        )
