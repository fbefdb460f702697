"""SDK errors: they pickle (Ray ships them between processes) and keep what they carry."""

from __future__ import annotations

import pickle

import grpc
import pytest

from client import (
    CapacityError,
    DeadlineExceededError,
    FatalError,
    InvalidArgumentError,
    KVStoreError,
    NotFoundError,
    RetryableError,
    StoreNotReadyError,
    StoreRestartedError,
    UnavailableError,
)
from client.errors import from_rpc_error


@pytest.mark.parametrize(
    "error",
    [
        UnavailableError(grpc.StatusCode.UNAVAILABLE, "store down", "h:1"),
        InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "k=0", "h:1"),
        CapacityError(grpc.StatusCode.RESOURCE_EXHAUSTED, "capacity_bytes=1", ""),
        FatalError(grpc.StatusCode.INTERNAL, "bug", "h:2"),
        StoreNotReadyError(grpc.StatusCode.DEADLINE_EXCEEDED, "not ready within 3", "h:1"),
        StoreRestartedError("restarted", "h:1", "old", "new", ["a", "b"]),
    ],
)
def test_errors_pickle_with_everything_they_carry(error: KVStoreError) -> None:
    error.incarnation = "inc"
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error) and str(back) == str(error)
    assert (back.code, back.details, back.target, back.incarnation) == (
        error.code,
        error.details,
        error.target,
        "inc",
    )
    if isinstance(error, StoreRestartedError):
        assert isinstance(back, StoreRestartedError)
        assert (back.old_incarnation, back.new_incarnation, back.sequence_ids) == (
            "old",
            "new",
            ("a", "b"),
        )


def test_hierarchy() -> None:
    restarted = StoreRestartedError("x")
    assert isinstance(restarted, NotFoundError) and isinstance(restarted, FatalError)
    assert restarted.code == grpc.StatusCode.NOT_FOUND
    not_ready = StoreNotReadyError(grpc.StatusCode.DEADLINE_EXCEEDED, "x")
    assert isinstance(not_ready, TimeoutError) and isinstance(not_ready, DeadlineExceededError)
    assert isinstance(not_ready, RetryableError)


class _Rpc(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.NOT_FOUND

    def details(self) -> str:
        return "sequence_id='s' not found"

    def trailing_metadata(self) -> tuple:
        return (("wavekv-incarnation", "abc"),)


def test_errors_carry_the_store_incarnation() -> None:
    err = from_rpc_error(_Rpc(), "h:1")
    assert isinstance(err, NotFoundError) and err.incarnation == "abc"


class _Broken(_Rpc):
    def __init__(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INTERNAL

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    "details",
    ["Stream removed (recvmsg:Connection reset by peer (104))", "Internal error from Core"],
)
def test_a_connection_lost_mid_call_is_unavailable_not_fatal(details: str) -> None:
    err = from_rpc_error(_Broken(details), "h:1")
    assert isinstance(err, UnavailableError) and err.code == grpc.StatusCode.UNAVAILABLE


def test_an_internal_error_with_the_stores_message_stays_fatal() -> None:
    err = from_rpc_error(_Broken("index out of range in put"), "h:1")
    assert isinstance(err, FatalError) and err.code == grpc.StatusCode.INTERNAL
