"""SDK exceptions: a small hierarchy mapped from gRPC status codes.

KVStoreError
  RetryableError      UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED (only UNAVAILABLE is retried
                      automatically, and only for idempotent calls)
  FatalError          everything else: fix the request, the credentials or the capacity
    InvalidArgumentError, NotFoundError, AlreadyExistsError, CapacityError, UnauthenticatedError,
    PermissionDeniedError, FailedPreconditionError
"""

from __future__ import annotations

import grpc


class KVStoreError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, target: str = "") -> None:
        super().__init__(f"{code.name}: {details}" + (f" (target {target})" if target else ""))
        self.code = code
        self.details = details
        self.target = target


class RetryableError(KVStoreError):
    """Transient: the same call may succeed later."""


class FatalError(KVStoreError):
    """Retrying the same call will fail the same way."""


class UnavailableError(RetryableError):
    pass


class DeadlineExceededError(RetryableError):
    pass


class InvalidArgumentError(FatalError):
    pass


class NotFoundError(FatalError):
    pass


class AlreadyExistsError(FatalError):
    pass


class CapacityError(FatalError):
    """RESOURCE_EXHAUSTED: the store's byte budget would be exceeded."""


class UnauthenticatedError(FatalError):
    pass


class PermissionDeniedError(FatalError):
    pass


class FailedPreconditionError(FatalError):
    pass


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


def from_rpc_error(exc: grpc.RpcError, target: str = "") -> KVStoreError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else None) or str(exc)
    return _BY_CODE.get(code, FatalError)(code, details, target)
