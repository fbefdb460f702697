"""Checks of the step I/O kernels (step_io.py) against their torch references, on fresh random
inputs: on CPU under TRITON_INTERPRET=1 (`python -m ...step_io_cases`) and on CUDA (tests)."""

from __future__ import annotations

import torch

from inference_worker.retroinfer.kernels.availability import interpreting
from inference_worker.retroinfer.kernels.step_io import (
    load_step,
    load_step_reference,
    unload_step,
    write_token,
)

# (batch, kv heads, query group, head dim, steady capacity): a GQA group that is not a power of
# two (SmolLM2: 9 / 3) and a head dim that is not one either
SHAPES = ((2, 3, 3, 64, 40), (3, 2, 4, 48, 17), (1, 8, 4, 128, 9), (1, 1, 2, 32, 5))


def check_load(device: str, seed: int) -> None:
    """load_step equals its reference bit for bit (every buffer; per-row positions at the
    zone's first and last token and random ones), with and without the query."""
    gen = torch.Generator().manual_seed(seed)
    for b, h, g, d, cap in SHAPES:
        r = b * h
        for pos in (
            torch.zeros(r),
            torch.full((r,), cap - 1),
            torch.randint(cap, (r,), generator=gen),
        ):
            for dtype, q_dtype in ((torch.bfloat16, torch.float32), (torch.float32, torch.float32)):
                _check_load_once(device, gen, (b, h, g, d, cap), pos.long(), dtype, q_dtype)


def _check_load_once(
    device: str,
    gen: torch.Generator,
    shape: tuple[int, int, int, int, int],
    pos: torch.Tensor,  # [R] int64
    dtype: torch.dtype,
    q_dtype: torch.dtype,
) -> None:
    b, h, g, d, cap = shape

    def rand(*s: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.randn(*s, generator=gen).to(dt).to(device)

    k, v, q = rand(b, h, d, dt=q_dtype), rand(b, h, d, dt=q_dtype), rand(b, h * g, d, dt=q_dtype)
    pos = pos.to(device)
    bufs = [rand(b, h, cap, d), rand(b, h, cap, d), rand(b, h * g, d)]
    want = [x.clone() for x in bufs]
    load_step_reference(k, v, want[0], want[1], pos, q, want[2])
    for with_q in (True, False):
        got = [x.clone() for x in bufs]
        q_in, q_out = (q, got[2]) if with_q else (None, None)
        load_step(k, v, got[0], got[1], pos, q_in, q_out, use_triton=True)
        expect = want if with_q else [*want[:2], bufs[2]]
        for name, a, e in zip(("steady_k", "steady_v", "q_dst"), got, expect, strict=True):
            assert _same(a, e, cast=dtype != q_dtype), (name, shape, pos, dtype, with_q)


def _same(a: torch.Tensor, e: torch.Tensor, cast: bool) -> bool:
    """Bit-equal; a narrowing cast under the CPU interpreter (which rounds toward zero where
    the GPU and torch round to nearest even) may differ by one unit in the last place."""
    if not (cast and interpreting()) or a.dtype != torch.bfloat16:
        return torch.equal(a, e)
    ulp = (a.view(torch.int16).int() - e.view(torch.int16).int()).abs()
    return bool((ulp <= 1).all()) and torch.equal(a.float().sign(), e.float().sign())


def check_write_token(device: str, seed: int) -> None:
    """write_token (device-side per-row positions) equals a per-row write at those positions."""
    gen = torch.Generator().manual_seed(seed)
    for b, h, _, d, cap in SHAPES:
        k = torch.randn(b, h, d, generator=gen).to(torch.bfloat16).to(device)
        v = torch.randn(b, h, d, generator=gen).to(torch.bfloat16).to(device)
        sk = torch.randn(b, h, cap, d, generator=gen).to(torch.bfloat16).to(device)
        sv = torch.randn(b, h, cap, d, generator=gen).to(torch.bfloat16).to(device)
        pos = torch.randint(cap, (b * h,), generator=gen).to(device)
        wk, wv = sk.clone(), sv.clone()
        for r, p in enumerate(pos.tolist()):
            wk[r // h, r % h, p], wv[r // h, r % h, p] = k[r // h, r % h], v[r // h, r % h]
        write_token(k, v, sk, sv, pos, use_triton=True)
        assert torch.equal(sk, wk) and torch.equal(sv, wv), (b, h, d, cap, pos)


def check_unload(device: str, seed: int) -> None:
    """unload_step: the output cast and the counts, as fresh tensors (a later write to the
    sources leaves them unchanged); an output larger than one program's block."""
    gen = torch.Generator().manual_seed(seed)
    for shape, dtype in (((4, 3, 64), torch.bfloat16), ((16, 4, 128), torch.float32)):
        out = torch.randn(*shape, generator=gen).to(device)
        counts = torch.randint(0, 1 << 40, (7,), generator=gen).to(device)
        want = unload_step(out, counts, dtype, use_triton=False)
        got = unload_step(out, counts, dtype, use_triton=True)
        assert got[0].dtype == dtype and _same(got[0], want[0], cast=True), shape
        assert torch.equal(got[1], want[1])
        out.fill_(7.0)
        counts.fill_(-1)
        assert _same(got[0], want[0], cast=True) and torch.equal(got[1], want[1])


def run_all(device: str, seed: int = 0) -> None:
    check_load(device, seed)
    check_write_token(device, seed + 1)
    check_unload(device, seed + 2)


if __name__ == "__main__":
    run_all("cpu")
    print("ok")
