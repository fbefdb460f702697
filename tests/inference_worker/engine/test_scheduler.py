"""The scheduler's admission, prefill order and slot reuse, with exact slots."""

from __future__ import annotations

from inference_worker.engine.scheduler import Scheduler
from inference_worker.engine.sequence import Sequence, Status
from inference_worker.engine.types import GenerationRequest


def _seq(name: str, length: int) -> Sequence:
    return Sequence.of(GenerationRequest(name, [1] * length, max_new_tokens=4), [1] * length)


def test_requests_take_the_lowest_free_slots_and_prefill_oldest_first() -> None:
    sched = Scheduler(max_batch_size=2)
    a, b, c = _seq("a", 10), _seq("b", 20), _seq("c", 5)
    for s in (a, b, c):
        sched.add(s)
    plan, admitted = sched.schedule()
    assert admitted == [a, b] and (a.slot, b.slot) == (0, 1) and c.status is Status.WAITING
    assert plan.prefill == [a] and plan.decode == []
    a.status = Status.RUNNING
    plan, admitted = sched.schedule()
    assert admitted == [] and plan.prefill == [b] and plan.decode == [a]
    a.status = Status.FINISHED
    sched.free(a)
    plan, admitted = sched.schedule()
    assert admitted == [c] and c.slot == 0 and plan.prefill == [b]


def test_cohorts_admit_equal_lengths_into_an_empty_batch_only() -> None:
    sched = Scheduler(max_batch_size=3, cohorts=True)
    a, b, c, d = _seq("a", 8), _seq("b", 9), _seq("c", 8), _seq("d", 8)
    for s in (a, b, c, d):
        sched.add(s)
    plan, admitted = sched.schedule()
    assert admitted == [a, c, d] and [s.slot for s in admitted] == [0, 1, 2]
    assert plan.prefill == [a, c, d]
    for s in admitted:
        s.status = Status.RUNNING
    c.status = Status.FINISHED
    sched.free(c)
    plan, admitted = sched.schedule()
    assert admitted == [] and plan.decode == [a, d]  # b waits for the whole cohort
    for s in (a, d):
        sched.free(s)
    _, admitted = sched.schedule()
    assert admitted == [b] and b.slot == 0


def test_find_and_remove_waiting() -> None:
    sched = Scheduler(max_batch_size=1)
    a, b = _seq("a", 3), _seq("b", 3)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    assert sched.find("a") is a and sched.find("b") is b and sched.find("x") is None
    sched.remove_waiting(b)
    assert sched.find("b") is None and sched.has_work()
