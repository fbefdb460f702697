"""Which requests run at each engine step: admission into batch slots, prefill chunks between
decode steps (vLLM's continuous batching, kept simple).

Each step prefills one chunk of the oldest admitted request (so a long prompt never stalls the
running requests for more than one chunk) and decodes every request whose prompt is done. A
finished request frees its slot at once and the oldest waiting request takes it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from inference_worker.engine.sequence import Sequence, Status


@dataclass(slots=True)
class Schedule:
    """One step's work before its decode (which takes every running request)."""

    prefill: list[Sequence] = field(default_factory=list)  # advanced by one chunk
    admitted: list[Sequence] = field(default_factory=list)  # took slots in this step


class Scheduler:
    """Waiting queue and batch slots (the lowest free slot first)."""

    def __init__(self, max_batch_size: int) -> None:
        self.slots: list[Sequence | None] = [None] * max_batch_size
        self.waiting: deque[Sequence] = deque()

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting) or any(s is not None for s in self.slots)

    def find(self, request_id: str) -> Sequence | None:
        for seq in [*self.waiting, *self.active()]:
            if seq.id == request_id:
                return seq
        return None

    def remove_waiting(self, seq: Sequence) -> None:
        self.waiting.remove(seq)

    def active(self) -> list[Sequence]:
        """Sequences holding a slot, in slot order."""
        return [s for s in self.slots if s is not None]

    def free(self, seq: Sequence) -> None:
        """Give back seq's slot."""
        assert seq.slot is not None and self.slots[seq.slot] is seq
        self.slots[seq.slot] = None
        seq.slot = None

    def schedule(self) -> Schedule:
        """Admit waiting requests into free slots; the oldest admitted prompt's next chunk."""
        admitted = []
        while self.waiting and None in self.slots:
            admitted.append(self._place(self.waiting.popleft(), self.slots.index(None)))
        prefilling = [s for s in self.active() if s.status is Status.PREFILLING]
        first = [min(prefilling, key=lambda s: s.arrival)] if prefilling else []
        return Schedule(first, admitted)

    def _place(self, seq: Sequence, slot: int) -> Sequence:
        seq.slot, seq.status = slot, Status.PREFILLING
        self.slots[slot] = seq
        return seq
