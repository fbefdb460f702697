"""Typed store errors. The core raises these; the servicer maps them to gRPC status codes.

`as_store_error` maps the failures the host can cause (no memory, a full disk or tmpfs) to
RESOURCE_EXHAUSTED; anything else is a bug and reaches the client as INTERNAL (and the log).
"""

from __future__ import annotations

import errno


class StoreError(Exception):
    """Base: a request the store refuses. `code` names the grpc.StatusCode member."""

    code = "INTERNAL"


class InvalidArgument(StoreError):
    code = "INVALID_ARGUMENT"


class NotFound(StoreError):
    code = "NOT_FOUND"


class AlreadyExists(StoreError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(StoreError):
    code = "FAILED_PRECONDITION"


class PermissionDenied(StoreError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(StoreError):
    """Capacity, memory, disk, stream or response limits."""

    code = "RESOURCE_EXHAUSTED"


CapacityExceeded = ResourceExhausted


class DeadlineExceeded(StoreError):
    code = "DEADLINE_EXCEEDED"


class Internal(StoreError):
    code = "INTERNAL"


EXHAUSTION_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EDQUOT, errno.EFBIG})


def as_store_error(exc: BaseException, what: str) -> StoreError:
    """The StoreError to answer for an exception raised while doing `what`."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, MemoryError):
        return ResourceExhausted(f"{what}: out of memory ({exc or 'allocation failed'})")
    if isinstance(exc, OSError) and exc.errno in EXHAUSTION_ERRNOS:
        return ResourceExhausted(f"{what}: {exc.strerror or exc} (errno {exc.errno})")
    return Internal(f"{what}: internal error {type(exc).__name__}")
