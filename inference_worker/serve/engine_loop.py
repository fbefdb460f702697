"""Drives a GenerationEngine from one background thread for an asyncio server.

The engine is not thread-safe, so one thread owns it: it takes commands (add, abort) from a
queue, steps the engine while it has work (every running request advances one token per step,
so concurrent requests are batched), and hands each step's outputs to the request's asyncio
queue with `loop.call_soon_threadsafe`. With no work it blocks on the command queue (no
polling). A request whose consumer goes away (client disconnect, cancellation) is aborted,
which releases its sequence in the store.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from inference_worker.engine import GenerationRequest, RequestOutput
    from inference_worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


class Slots(Protocol):
    """The engine scheduler's queues (for the queue-length gauges)."""

    @property
    def waiting(self) -> Sized: ...

    def active(self) -> Sized: ...


class StepEngine(Protocol):
    """The part of GenerationEngine the loop uses."""

    @property
    def scheduler(self) -> Slots: ...

    def add_request(self, request: GenerationRequest) -> None: ...

    def abort_request(self, request_id: str) -> bool: ...

    def step(self) -> list[RequestOutput]: ...

    def has_unfinished_requests(self) -> bool: ...


class EngineStopped(RuntimeError):
    """The loop was closed (or its thread died) while a request was in flight."""


@dataclass(slots=True)
class _Stream:
    """The asyncio side of one request."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    arrival: float = field(default_factory=time.perf_counter)
    last_token: float | None = None

    def put(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


_ACCEPTED = object()  # first item of a stream: add_request succeeded


class EngineLoop:
    """One engine, one thread; `generate` yields a request's RequestOutputs as they come."""

    def __init__(self, engine: StepEngine, metrics: WorkerMetrics | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self._commands: queue.SimpleQueue[tuple[str, Any, Any]] = queue.SimpleQueue()
        self._streams: dict[str, _Stream] = {}  # owned by the loop thread
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)
        self._thread.start()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[RequestOutput]:
        """Queue `request`; raises ValueError (from add_request) before the first output if the
        engine refuses it. Leaving the iteration early aborts the request."""
        if self._closed or not self._thread.is_alive():
            raise EngineStopped("the engine loop is not running")
        stream = _Stream(asyncio.get_running_loop())
        self._commands.put(("add", request, stream))
        try:
            first = await stream.queue.get()
        except asyncio.CancelledError:
            self.abort(request.id)  # it may be queued by now
            raise
        if isinstance(first, BaseException):
            raise first
        assert first is _ACCEPTED
        return self._outputs(request.id, stream)

    async def _outputs(self, request_id: str, stream: _Stream) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
        finally:
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Ask the loop to abort a request (safe from any thread; no-op when it is done)."""
        self._commands.put(("abort", request_id, None))

    def running(self) -> bool:
        return not self._closed and self._thread.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread; requests in flight end with EngineStopped."""
        self._closed = True
        self._commands.put(("close", None, None))
        self._thread.join(timeout_s)

    def _run(self) -> None:
        try:
            while True:
                busy = self.engine.has_unfinished_requests()
                if not self._drain(block=not busy):
                    break
                if self.engine.has_unfinished_requests():
                    self._step()
        finally:
            self._closed = True
            stopped = EngineStopped("the engine loop stopped")
            for stream in self._streams.values():
                stream.put(stopped)
            self._streams.clear()
            while not self._commands.empty():  # adds that never reached the engine
                kind, _, stream = self._commands.get_nowait()
                if kind == "add":
                    stream.put(stopped)

    def _drain(self, block: bool) -> bool:
        """Apply queued commands (waiting for one when idle); False once asked to close."""
        try:
            command = self._commands.get(block=block)
        except queue.Empty:
            return True
        while True:
            kind, payload, stream = command
            if kind == "close":
                return False
            if kind == "add":
                self._add(payload, stream)
            else:
                self.engine.abort_request(payload)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True

    def _add(self, request: GenerationRequest, stream: _Stream) -> None:
        try:
            self.engine.add_request(request)
        except ValueError as err:
            stream.put(err)
            return
        self._streams[request.id] = stream
        stream.put(_ACCEPTED)

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception:
            # The engine finished every active request with "abort" and the error in its
            # stats; the next step reports them. Keep serving the others.
            log.exception("engine step failed")
            return
        now = time.perf_counter()
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is None:
                continue
            self._observe(output, stream, now)
            stream.put(output)
            if output.finished:
                del self._streams[output.request_id]
        self._queue_gauges()

    def _observe(self, output: RequestOutput, stream: _Stream, now: float) -> None:
        if self.metrics is None:
            return
        if output.new_token_ids:
            self.metrics.tokens(len(output.new_token_ids))
            if stream.last_token is not None:
                self.metrics.token_gaps(now - stream.last_token)
            stream.last_token = now
        if output.finished and output.result is not None:
            stats = output.result.stats
            ttft = float(stats.get("time_to_first_token_s", 0.0))
            reason = output.finish_reason or "abort"
            self.metrics.finished(stats, reason, ttft, now - stream.arrival)

    def _queue_gauges(self) -> None:
        if self.metrics is not None:
            slots = self.engine.scheduler
            self.metrics.queue(len(slots.waiting), len(slots.active()))
