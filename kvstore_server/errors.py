"""Typed store errors. The core raises these; the servicer maps them to gRPC status codes."""

from __future__ import annotations


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


class CapacityExceeded(StoreError):
    code = "RESOURCE_EXHAUSTED"
