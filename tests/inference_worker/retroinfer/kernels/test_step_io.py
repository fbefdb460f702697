"""The step I/O kernels (load_step, write_token, unload_step): the torch references against
brute force and bad inputs (CPU), the Triton kernels against the references (interpreted on CPU,
compiled on CUDA)."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer.kernels.step_io import load_step, unload_step, write_token
from tests.inference_worker.retroinfer.kernels.step_io_cases import run_all
from tests.interpret import run_check

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _buffers(b=2, h=3, g=2, d=8, cap=6):
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(b, h, d, generator=gen), torch.randn(b, h, d, generator=gen)
    q = torch.randn(b, h * g, d, generator=gen)
    steady_k, steady_v = torch.randn(b, h, cap, d), torch.randn(b, h, cap, d)
    return k, v, q, steady_k, steady_v


def test_load_step_reference_writes_each_rows_position_and_the_query():
    k, v, q, sk, sv = _buffers()
    before_k, before_v = sk.clone(), sv.clone()
    pos = torch.tensor([4, 0, 5, 1, 1, 3])  # [R = 2 * 3] a position per (sequence, kv head)
    q_dst = torch.zeros_like(q, dtype=torch.bfloat16)
    load_step(k, v, sk, sv, pos, q, q_dst, use_triton=False)
    assert torch.equal(q_dst, q.to(torch.bfloat16))
    for r, at in enumerate(pos.tolist()):
        b, h = divmod(r, 3)
        for p in range(sk.shape[2]):
            want_k = k[b, h] if p == at else before_k[b, h, p]
            want_v = v[b, h] if p == at else before_v[b, h, p]
            assert torch.equal(sk[b, h, p], want_k) and torch.equal(sv[b, h, p], want_v), (r, p)


def test_write_token_reference_uses_the_device_positions():
    k, v, _, sk, sv = _buffers()
    want_k = sk.clone()
    want_k[:, :, 2] = k
    write_token(k, v, sk, sv, torch.full((6,), 2), use_triton=False)
    assert torch.equal(sk, want_k) and torch.equal(sv[:, :, 2], v)


def test_unload_reference_returns_fresh_copies():
    out, counts = torch.randn(4, 2, 8), torch.arange(7)
    o, c = unload_step(out, counts, torch.bfloat16, use_triton=False)
    out.zero_()
    counts.zero_()
    assert o.dtype == torch.bfloat16 and c.tolist() == list(range(7)) and bool(o.ne(0).any())


@pytest.mark.parametrize("shape", [(1,), (5,), (2, 3)])
def test_load_step_rejects_positions_of_the_wrong_shape(shape):
    k, v, _, sk, sv = _buffers()
    before = sk.clone()
    with pytest.raises(ValueError, match=r"pos must have shape \[B \* Hkv\] = \[6\]"):
        load_step(k, v, sk, sv, torch.zeros(shape, dtype=torch.int64))
    assert torch.equal(sk, before)


def test_load_step_needs_q_and_its_buffer_together():
    k, v, q, sk, sv = _buffers()
    before_k, before_v = sk.clone(), sv.clone()
    with pytest.raises(ValueError, match="q and q_dst go together"):
        load_step(k, v, sk, sv, torch.zeros(6, dtype=torch.int64), q, None)
    assert torch.equal(sk, before_k) and torch.equal(sv, before_v)


def test_step_io_kernels_match_references_interpreted():
    pytest.importorskip("triton")
    run_check(["-m", "tests.inference_worker.retroinfer.kernels.step_io_cases"])


@cuda
def test_step_io_kernels_match_references_gpu():
    run_all("cuda", seed=31)
