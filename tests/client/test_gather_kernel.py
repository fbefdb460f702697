"""The same-host gather building blocks against plain references: run expansion, the Triton run
gather (interpreted on CPU in a subprocess; compiled on CUDA) and every CUDA gather method."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from client import ClientOptions, KVStoreClient, SequenceGeometry
from client.shm import GATHER_METHODS, _expand
from inference_worker.engine.grpc_link import GrpcStoreLink
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings
from tests.interpret import run_check
from tests.store_fixtures import make_segment, unique_ids

KERNEL_CHECK = """
import torch
from client.gather_kernel import GatherConfig, gather_runs, gather_runs_reference
g = torch.Generator().manual_seed(int(__import__('sys').argv[1]))
src = torch.randint(-2**62, 2**62, (400, 16), generator=g)
k = 12
lens = torch.randint(0, 40, (k,), generator=g)
ss = torch.randint(0, 360, (k,), generator=g)
ds = torch.cat([torch.zeros(1, dtype=torch.int64), lens.cumsum(0)[:-1]])
# tiles of 32 rows (one program per run), 4 rows (runs split over 16 programs), 1 row (64)
for tile in (4096, 512, 128):
    a = torch.zeros(int(lens.sum()) + 1, 16, dtype=torch.int64); b = a.clone()
    gather_runs(src, a, ss, ds, lens, config=GatherConfig(tile, 1))
    gather_runs_reference(src, b, ss, ds, lens)
    assert torch.equal(a, b), tile
print("ok")
"""


@pytest.fixture
def namespace() -> str:  # here too: the GPU suite runs this file without conftest
    return f"gather-{os.getpid()}-{np.random.default_rng().integers(1 << 30)}"


def test_expand_matches_plain_loop() -> None:
    rng = np.random.default_rng(1)
    runs = np.stack([rng.integers(0, 1000, 30), rng.integers(0, 1000, 30), rng.integers(0, 9, 30)])
    src, dst = _expand(runs)
    want = [(s + r, d + r) for s, d, n in runs.T for r in range(n)]
    assert list(zip(src.tolist(), dst.tolist(), strict=True)) == want


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA: the compiled kernel is tested below")
def test_triton_run_gather_matches_reference_interpreted() -> None:
    pytest.importorskip("triton")
    for seed in (0, 1):
        run_check(["-c", KERNEL_CHECK, str(seed)], timeout=300)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_cuda_gather_methods_match_streaming(dtype: str, namespace: str) -> None:
    rng = np.random.default_rng(5)
    ids = ["a", "b"]
    settings = ServerSettings(port=0, log_format="text", log_level="WARNING")
    with EmbeddedStore(settings) as server:
        shm = GrpcStoreLink(
            KVStoreClient(server.target, ClientOptions(namespace=namespace)), "require"
        )
        stream = GrpcStoreLink(
            KVStoreClient(server.target, ClientOptions(namespace=namespace)), "off"
        )
        try:
            shm.open(ids, SequenceGeometry(1, 2, 64, dtype))
            stream.open(ids, SequenceGeometry(1, 2, 64, dtype))
            for sid in ids:
                shm.client.put_segments(
                    sid, [make_segment(rng, 0, h, 40, 64, dtype, max_size=9) for h in range(2)]
                )
            cluster_ids = torch.from_numpy(unique_ids(rng, 40, (2, 2, 6))).cuda()
            want = stream.fetch(0, ids, cluster_ids, 64)
            arena = shm._arena
            assert arena is not None
            for method in GATHER_METHODS:
                arena_method = arena.gather_packed
                shm._arena.gather_packed = (  # type: ignore[method-assign]
                    lambda *a, m=method, f=arena_method, **k: f(*a, method=m, **k)
                )
                got = shm.fetch(0, ids, cluster_ids, 64)
                shm._arena.gather_packed = arena_method  # type: ignore[method-assign]
                assert got.keys.is_cuda
                assert torch.equal(got.keys.cpu().view(torch.uint8), want.keys.view(torch.uint8))
                assert torch.equal(
                    got.values.cpu().view(torch.uint8), want.values.view(torch.uint8)
                )
                assert torch.equal(got.offsets.cpu(), want.offsets.cpu())
        finally:
            shm.close()
            stream.close()
