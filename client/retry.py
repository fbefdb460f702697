"""Retries: idempotent calls are retried on UNAVAILABLE within the call's deadline.

After a failed try the call backs off (exponential, with jitter), then waits until the channel
is connected again (a restarting store: gRPC reconnects on its own) before the next try; every
try, backoff and wait comes out of the same deadline (`ClientOptions.timeout_s` or the call's
`timeout_s`). Non-idempotent calls (put_segments: an append) are tried once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from client.errors import (
    DeadlineExceededError,
    KVStoreError,
    UnavailableError,
    from_rpc_error,
)

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    max_attempts: int = 8  # tries of an idempotent call at most (1 = no retry)
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +-20% random spread on each backoff

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts} must be >= 1")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError(
                f"need 0 < initial_backoff_s={self.initial_backoff_s} <= "
                f"max_backoff_s={self.max_backoff_s}"
            )
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError(
                f"multiplier={self.multiplier} must be >= 1 and jitter={self.jitter} in [0, 1)"
            )

    def backoff_s(self, attempt: int) -> float:
        base = min(self.initial_backoff_s * self.multiplier**attempt, self.max_backoff_s)
        return base * (1 + random.uniform(-self.jitter, self.jitter))


def _expired(target: str, timeout_s: float, cause: grpc.RpcError | None) -> KVStoreError:
    """The error when the deadline passes between tries: the store stayed unavailable."""
    if cause is not None:
        return UnavailableError(
            grpc.StatusCode.UNAVAILABLE,
            f"{cause.details()} (still unavailable when timeout_s={timeout_s:g} ran out)",
            target,
        )
    return DeadlineExceededError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"call did not start within timeout_s={timeout_s:g}",
        target,
    )


async def call_with_retry(
    fn: Callable[[float], Awaitable[T]],
    policy: RetryPolicy,
    idempotent: bool,
    target: str,
    timeout_s: float,
    wait_ready: Callable[[], Awaitable[None]] | None = None,
) -> T:
    """Run fn(remaining seconds); see the module docstring. Errors become KVStoreError."""
    deadline = time.monotonic() + timeout_s
    attempts = policy.max_attempts if idempotent else 1
    cause: grpc.RpcError | None = None
    for attempt in range(attempts):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _expired(target, timeout_s, cause)
        try:
            return await fn(remaining)
        except grpc.RpcError as exc:
            if attempt == attempts - 1 or exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise from_rpc_error(exc, target) from None
            cause = exc
        pause = min(policy.backoff_s(attempt), max(deadline - time.monotonic(), 0))
        await asyncio.sleep(pause)
        if wait_ready is not None:
            try:
                await asyncio.wait_for(wait_ready(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                raise _expired(target, timeout_s, cause) from None
    raise AssertionError("unreachable")


def call_with_retry_sync(
    fn: Callable[[float], T],
    policy: RetryPolicy,
    idempotent: bool,
    target: str,
    timeout_s: float,
    channel: grpc.Channel | None = None,
) -> T:
    """call_with_retry for blocking calls (waits on `channel` becoming ready)."""
    deadline = time.monotonic() + timeout_s
    attempts = policy.max_attempts if idempotent else 1
    cause: grpc.RpcError | None = None
    for attempt in range(attempts):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _expired(target, timeout_s, cause)
        try:
            return fn(remaining)
        except grpc.RpcError as exc:
            if attempt == attempts - 1 or exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise from_rpc_error(exc, target) from None
            cause = exc
        time.sleep(min(policy.backoff_s(attempt), max(deadline - time.monotonic(), 0)))
        if channel is not None:
            try:
                grpc.channel_ready_future(channel).result(max(deadline - time.monotonic(), 0))
            except grpc.FutureTimeoutError:
                raise _expired(target, timeout_s, cause) from None
    raise AssertionError("unreachable")
