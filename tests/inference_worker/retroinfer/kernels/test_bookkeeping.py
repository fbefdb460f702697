"""Fused wave-buffer bookkeeping (plan + admit kernels, plan ranking an unsorted retrieval list),
direct admission (source -> cache pages before the attention) and the fused fetch index math vs
their torch references on fresh random steps: identical outputs and state (owner, fill, stamps,
clock, counters, page rows); the layer's Triton step (direct admission and packed fetch) vs the
torch reference step. Interpreted on CPU (TRITON_INTERPRET=1, subprocess) and compiled on CUDA
(skipped without a GPU)."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer import WaveBuffer
from inference_worker.retroinfer.kernels.bookkeeping import MAX_BLOCK_P, fusable, plan_step
from tests.inference_worker.retroinfer.kernels.book_cases import (
    check_bookkeeping,
    check_direct,
    check_fetch_runs,
    check_layer_paths,
    check_slots,
)
from tests.interpret import run_check

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_fused_bookkeeping_matches_reference_interpreted():
    pytest.importorskip("triton")
    run_check(["-m", "tests.inference_worker.retroinfer.kernels.book_cases"])


def test_reference_plan_on_cpu_and_too_large_rows():
    small = WaveBuffer(2, 10, 4, 8, torch.float32, torch.device("cpu"))
    small.grow(20)
    ret = torch.arange(6).expand(2, 6).contiguous()
    plan = plan_step(small, ret, torch.full((2, 20), 5), cap_tokens=12, width=4)
    assert not plan.fused  # CPU without the interpreter: the torch reference
    assert plan.overflow.tolist() == [[False, False, True, True, True, True]] * 2
    assert plan.miss_ids.tolist() == [[0, 1, -1, -1, -1, -1]] * 2
    big = WaveBuffer(1, MAX_BLOCK_P, 4, 8, torch.float32, torch.device("cpu"))
    assert fusable(small, 6) and not fusable(big, 6)


@cuda
def test_fused_bookkeeping_matches_reference_gpu():
    seen = check_bookkeeping(128, 8192, 147, 882, 8, "cuda", seed=5, page_tokens=8, head_dim=128)
    assert seen["evicted"] > 0 and seen["hits"] > 0, seen
    seen = check_bookkeeping(16, 500, 40, 60, 8, "cuda", seed=6, page_tokens=8, head_dim=64)
    assert seen["rejected"] > 0 and seen["evicted"] > 0, seen
    seen = check_bookkeeping(8, 400, 30, 200, 6, "cuda", seed=7, cap_tokens=100)
    assert seen["overflow"] > 0, seen


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [8, 9, 10])
def test_layer_fused_bookkeeping_matches_torch_paths_gpu(dtype, seed):
    check_layer_paths("cuda", dtype, seed=seed, shape=(2, 32, 8, 128, 20000, 6))


@cuda
def test_fused_fetch_runs_match_reference_gpu():
    check_fetch_runs("cuda", seed=9, segments=3, n=150)


@cuda
def test_direct_admission_matches_reference_gpu():
    check_direct("cuda", seed=10, rows=16, segments=3, steps=8)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_slots_joining_and_leaving_match_the_reference_gpu(dtype):
    check_slots("cuda", dtype, seed=11, steps=12)
