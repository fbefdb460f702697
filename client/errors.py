"""SDK exceptions: a small hierarchy mapped from gRPC status codes.

KVStoreError
  RetryableError      UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED (only UNAVAILABLE is retried
                      automatically, and only for idempotent calls)
    StoreNotReadyError  wait_ready ran out of time (also a builtin TimeoutError)
  FatalError          everything else: fix the request, the credentials or the capacity
    InvalidArgumentError, NotFoundError, AlreadyExistsError, CapacityError, UnauthenticatedError,
    PermissionDeniedError, FailedPreconditionError
      StoreRestartedError (a NotFoundError): the store lost sequences this client created

Every error pickles (Ray ships exceptions between processes) and keeps code, details, target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from wavekv_proto.layout import INCARNATION_KEY


def _rebuild(cls: type[KVStoreError], code: str, details: str, target: str, extra: dict) -> Any:
    err = cls.__new__(cls)
    KVStoreError.__init__(err, grpc.StatusCode[code], details, target)
    err.__dict__.update(extra)
    return err


class KVStoreError(Exception):
    incarnation = ""  # the store's incarnation id, when its reply carried one

    def __init__(self, code: grpc.StatusCode, details: str, target: str = "") -> None:
        super().__init__(f"{code.name}: {details}" + (f" (target {target})" if target else ""))
        self.code = code
        self.details = details
        self.target = target

    def __reduce__(self) -> tuple[Any, ...]:
        extra = {k: v for k, v in self.__dict__.items() if k not in ("code", "details", "target")}
        return (_rebuild, (type(self), self.code.name, self.details, self.target, extra))


class RetryableError(KVStoreError):
    """Transient: the same call may succeed later."""


class FatalError(KVStoreError):
    """Retrying the same call will fail the same way."""


class UnavailableError(RetryableError):
    pass


class DeadlineExceededError(RetryableError):
    pass


class StoreNotReadyError(DeadlineExceededError, TimeoutError):
    """wait_ready() timed out: the store did not accept a connection in time."""


class InvalidArgumentError(FatalError):
    pass


class NotFoundError(FatalError):
    pass


class AlreadyExistsError(FatalError):
    pass


class CapacityError(FatalError):
    """RESOURCE_EXHAUSTED: a capacity or limit of the store would be exceeded."""


class UnauthenticatedError(FatalError):
    pass


class PermissionDeniedError(FatalError):
    pass


class FailedPreconditionError(FatalError):
    pass


class StoreRestartedError(NotFoundError):
    """The store restarted and lost sequences this client created: its incarnation id changed
    (`old_incarnation` -> `new_incarnation`). Not retryable as such: create the sequences again
    (and re-upload their segments), then carry on. Raised instead of NotFoundError by any call
    that names such a sequence; a warm restart that re-attached everything keeps the incarnation
    and raises nothing."""

    def __init__(
        self,
        details: str,
        target: str = "",
        old_incarnation: str = "",
        new_incarnation: str = "",
        sequence_ids: Sequence[str] = (),
    ) -> None:
        super().__init__(grpc.StatusCode.NOT_FOUND, details, target)
        self.old_incarnation = old_incarnation
        self.new_incarnation = new_incarnation
        self.sequence_ids = tuple(sequence_ids)


_BY_CODE: dict[grpc.StatusCode, type[KVStoreError]] = {
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.ABORTED: RetryableError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: CapacityError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
}


# A connection that broke mid-call can reach the client as INTERNAL or UNKNOWN with one of these
# transport messages (a store killed during a stream): that is a store gone, not a bug.
# "Internal error from Core" is gRPC core's own status for a client stream whose writes failed
# on a dead connection (seen when the store was killed during a put stream); the store's own
# INTERNAL errors always carry their message.
TRANSPORT_FAILURES = (
    "Internal error from Core",
    "Stream removed",
    "Socket closed",
    "Connection reset",
    "Broken pipe",
    "GOAWAY",
    "Error in HTTP transport",
)


def from_rpc_error(exc: grpc.RpcError, target: str = "") -> KVStoreError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    lost = code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and any(
        marker in details for marker in TRANSPORT_FAILURES
    )
    if lost:
        code = grpc.StatusCode.UNAVAILABLE
    err = _BY_CODE.get(code, FatalError)(code, details, target)
    incarnation = incarnation_of(exc)
    if incarnation:
        err.incarnation = incarnation
    return err


def incarnation_of(exc: grpc.RpcError) -> str | None:
    """The store incarnation id in an error's trailing metadata (None if absent)."""
    try:
        trailer = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    except Exception:  # a call object without trailers
        return None
    for item in trailer or ():
        key, value = item[0], item[1]  # type: ignore[index]
        if key == INCARNATION_KEY:
            return value.decode() if isinstance(value, bytes) else str(value)
    return None


def invalid(details: str, target: str = "") -> InvalidArgumentError:
    """A request the SDK refuses before sending it."""
    return InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, details, target)


class SharedMemoryUnavailable(RuntimeError):
    """The arena cannot be used from here (remote store, other /dev/shm, shm off, no torch)."""


class StaleDescriptorError(RuntimeError):
    """Gathered memory was freed or reused (generation mismatch): discard and refetch."""
