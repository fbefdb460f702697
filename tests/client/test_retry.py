"""SDK internals against plain references: retry policy, consistent hashing, fetch framing."""

from __future__ import annotations

import asyncio
import os

import grpc
import numpy as np
import pytest

from client import FatalError, InvalidArgumentError, RetryPolicy, UnavailableError
from client.retry import call_with_retry
from client.sharding import HashRing
from kvstore_server.segments import HeadStore
from wavekv_proto.framing import decode_response, encode_chunk
from wavekv_proto.wavekv.v1 import kvstore_pb2 as pb


class _Status(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return f"status {self._code.name}"


def _attempts(codes: list[grpc.StatusCode], idempotent: bool) -> tuple[int, BaseException | None]:
    calls = 0

    async def fn(remaining_s: float) -> str:
        nonlocal calls
        assert 0 < remaining_s <= 10.0
        calls += 1
        if calls <= len(codes):
            raise _Status(codes[calls - 1])
        return "ok"

    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.001, max_backoff_s=0.002)
    try:
        asyncio.run(call_with_retry(fn, policy, idempotent, "t", 10.0))
    except BaseException as exc:
        return calls, exc
    return calls, None


def test_retries_unavailable_only_for_idempotent_calls() -> None:
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert _attempts([unavailable] * 2, idempotent=True) == (3, None)
    calls, exc = _attempts([unavailable] * 9, idempotent=True)
    assert calls == 4 and isinstance(exc, UnavailableError)
    calls, exc = _attempts([unavailable], idempotent=False)
    assert calls == 1 and isinstance(exc, UnavailableError)
    calls, exc = _attempts([grpc.StatusCode.INVALID_ARGUMENT], idempotent=True)
    assert calls == 1 and isinstance(exc, InvalidArgumentError) and isinstance(exc, FatalError)


def test_retry_policy_validates_and_backs_off() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, jitter=0.0)
    assert [policy.backoff_s(a) for a in range(4)] == [0.1, 0.2, 0.4, 0.5]
    with pytest.raises(ValueError, match="max_attempts=0"):
        RetryPolicy(max_attempts=0)


def test_hash_ring_is_stable_and_balanced() -> None:
    targets = [f"h{i}:1" for i in range(4)]
    ring = HashRing(targets)
    owners = [ring.shard_of(f"seq-{i}") for i in range(4000)]
    assert owners == [HashRing(targets).shard_of(f"seq-{i}") for i in range(4000)]
    counts = np.bincount(owners, minlength=4)
    assert counts.min() > 600, counts
    grown = HashRing([*targets, "h4:1"])  # adding a store moves only the keys it takes over
    moved = [i for i in range(4000) if grown.shard_of(f"seq-{i}") not in (owners[i], 4)]
    assert moved == []


def test_chunk_framing_matches_protobuf_on_fresh_inputs() -> None:
    rng = np.random.default_rng(0)
    for offset, n in [(0, 1), (1, 127), (128, 128), (int(rng.integers(1 << 40)), 1 << 20), (5, 0)]:
        data = os.urandom(n)
        ref = pb.FetchClustersResponse(
            chunk=pb.FetchChunk(offset=offset, data=data)
        ).SerializeToString()
        assert encode_chunk(offset, memoryview(data)) == ref
        got_offset, got = decode_response(ref)  # type: ignore[misc]
        assert got_offset == offset and bytes(got) == data
    header = pb.FetchClustersResponse(header=pb.FetchHeader(total_bytes=7)).SerializeToString()
    parsed = decode_response(header)
    assert isinstance(parsed, pb.FetchClustersResponse) and parsed.header.total_bytes == 7


def test_gather_rows_matches_per_cluster_reference_on_fresh_inputs() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        c = int(rng.integers(1, 200))
        sizes = rng.integers(0, 20, c)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        head = HeadStore(head_dim=4, row_bytes=8)
        head._offsets, head.num_clusters = offsets, c  # offsets are all gather_rows reads
        ids = rng.integers(0, c, int(rng.integers(0, 50)))
        rows, out_offsets = head.gather_rows(ids)
        ref = [r for i in ids for r in range(offsets[i], offsets[i + 1])]
        assert rows.tolist() == ref
        assert out_offsets.tolist() == [0, *np.cumsum(sizes[ids]).tolist()]
