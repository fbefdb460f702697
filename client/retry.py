"""Retry policy: exponential backoff with jitter on UNAVAILABLE, for idempotent calls only."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

from client.errors import from_rpc_error

T = TypeVar("T")


@dataclass(slots=True)
class RetryPolicy:
    max_attempts: int = 4  # total tries of an idempotent call (1 = no retry)
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 2.0
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


async def call_with_retry(
    fn: Callable[[], Awaitable[T]], policy: RetryPolicy, idempotent: bool, target: str
) -> T:
    """Run fn; on UNAVAILABLE retry idempotent calls with backoff; map errors to KVStoreError."""
    attempts = policy.max_attempts if idempotent else 1
    for attempt in range(attempts):
        try:
            return await fn()
        except grpc.RpcError as exc:
            last = attempt == attempts - 1
            if last or exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise from_rpc_error(exc, target) from None
        await asyncio.sleep(policy.backoff_s(attempt))
    raise AssertionError("unreachable")


def call_with_retry_sync(
    fn: Callable[[], T], policy: RetryPolicy, idempotent: bool, target: str
) -> T:
    """call_with_retry for blocking calls."""
    attempts = policy.max_attempts if idempotent else 1
    for attempt in range(attempts):
        try:
            return fn()
        except grpc.RpcError as exc:
            last = attempt == attempts - 1
            if last or exc.code() != grpc.StatusCode.UNAVAILABLE:
                raise from_rpc_error(exc, target) from None
        time.sleep(policy.backoff_s(attempt))
    raise AssertionError("unreachable")
