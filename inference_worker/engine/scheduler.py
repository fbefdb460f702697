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
    """One step's work."""

    prefill: list[Sequence] = field(default_factory=list)  # advanced by one chunk together
    decode: list[Sequence] = field(default_factory=list)  # one token each, in slot order


class Scheduler:
    """Waiting queue and batch slots. `cohorts`: admit only into an empty batch, a group of
    equal prompt length that prefills and decodes together (for attention backends whose
    batch rows must share one length)."""

    def __init__(self, max_batch_size: int, cohorts: bool = False) -> None:
        self.slots: list[Sequence | None] = [None] * max_batch_size
        self.waiting: deque[Sequence] = deque()
        self.cohorts = cohorts

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

    def schedule(self) -> tuple[Schedule, list[Sequence]]:
        """This step's work, and the sequences admitted into slots by this call."""
        admitted = self._admit_cohort() if self.cohorts else self._admit()
        active = self.active()
        prefilling = [s for s in active if s.status is Status.PREFILLING]
        if not self.cohorts and prefilling:
            prefilling = [min(prefilling, key=lambda s: s.arrival)]
        running = [s for s in active if s.status is Status.RUNNING]
        return Schedule(prefilling, running), admitted

    def _admit(self) -> list[Sequence]:
        admitted = []
        while self.waiting and None in self.slots:
            admitted.append(self._place(self.waiting.popleft(), self.slots.index(None)))
        return admitted

    def _admit_cohort(self) -> list[Sequence]:
        """Into an empty batch: the oldest waiting request and the next ones of its length."""
        if not self.waiting or any(s is not None for s in self.slots):
            return []
        length = len(self.waiting[0].prompt)
        group = [s for s in self.waiting if len(s.prompt) == length][: len(self.slots)]
        for seq in group:
            self.waiting.remove(seq)
        return [self._place(seq, i) for i, seq in enumerate(group)]

    def _place(self, seq: Sequence, slot: int) -> Sequence:
        seq.slot, seq.status = slot, Status.PREFILLING
        self.slots[slot] = seq
        return seq
