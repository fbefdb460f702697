"""A decode step's inputs into the layer's buffers and its outputs out of them, one kernel each.

Between two CUDA-graph replays of a layer step (eight small torch kernels otherwise):
`load_step` writes each row's new token K/V into the steady zone at the row's position (a device
tensor) and the query into the graph's static query buffer; `unload_step` copies the output
(cast to the caller's dtype) and the step counts out of the graph's buffers, which the next
replay overwrites. `write_token` is the steady-zone write alone (inside a captured step).
"""

from __future__ import annotations

import torch

from .availability import pick
from .sizes import cdiv, next_pow2

UNLOAD_BLOCK = 2048  # output elements per unload program


def load_step(
    k_new: torch.Tensor,  # [B, Hkv, D] the new token's keys
    v_new: torch.Tensor,  # [B, Hkv, D] its values
    steady_k: torch.Tensor,  # [B, Hkv, cap, D] steady-zone keys (row r written at pos[r])
    steady_v: torch.Tensor,  # [B, Hkv, cap, D]
    pos: torch.Tensor,  # [R = B * Hkv] int64 device positions (no host synchronisation)
    q: torch.Tensor | None = None,  # [B, Hq, D] the step's query, copied into q_dst
    q_dst: torch.Tensor | None = None,  # [B, Hq, D] in its own dtype
    use_triton: bool | None = None,
) -> None:
    """Writes the new token of each row at its position of the steady zone and q into q_dst
    (cast to the buffers' dtypes). One kernel on the Triton path; capturable."""
    b, h = steady_k.shape[:2]
    if pos.shape != (b * h,):
        raise ValueError(f"pos must have shape [B * Hkv] = [{b * h}], got {list(pos.shape)}")
    if (q is None) != (q_dst is None):
        raise ValueError("q and q_dst go together")
    if not pick(use_triton, steady_k):
        load_step_reference(k_new, v_new, steady_k, steady_v, pos, q, q_dst)
        return
    _launch_token(k_new, v_new, steady_k, steady_v, pos, q, q_dst)


def write_token(
    k_new: torch.Tensor,  # [B, Hkv, D]
    v_new: torch.Tensor,  # [B, Hkv, D]
    steady_k: torch.Tensor,  # [B, Hkv, cap, D]
    steady_v: torch.Tensor,  # [B, Hkv, cap, D]
    pos: torch.Tensor,  # [R] int64 device positions
    use_triton: bool | None = None,
) -> None:
    """steady[b, h, pos[b * Hkv + h]] = new token (capturable)."""
    load_step(k_new, v_new, steady_k, steady_v, pos, use_triton=use_triton)


def unload_step(
    out: torch.Tensor,  # [R, G, D] the step's output (fp32, the graph's buffer)
    counts: torch.Tensor,  # [N] int64 the step's counts (the graph's buffer)
    dtype: torch.dtype,  # the caller's dtype
    use_triton: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh copies (out in `dtype`, counts) that later replays leave alone."""
    if not pick(use_triton, out):
        return out.to(dtype, copy=True), counts.clone()
    from ._step_io_triton import unload_kernel

    out = out.contiguous()
    out_copy = torch.empty(out.shape, dtype=dtype, device=out.device)
    counts_copy = torch.empty_like(counts)
    n, nc = out.numel(), counts.numel()
    unload_kernel[(cdiv(n, UNLOAD_BLOCK),)](
        out, out_copy, counts.contiguous(), counts_copy, n, nc,
        BLOCK=UNLOAD_BLOCK, CB=next_pow2(nc), num_warps=4,
    )  # fmt: skip
    return out_copy, counts_copy


def load_step_reference(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    steady_k: torch.Tensor,
    steady_v: torch.Tensor,
    pos: torch.Tensor,
    q: torch.Tensor | None = None,
    q_dst: torch.Tensor | None = None,
) -> None:
    """torch reference of load_step."""
    b, h, cap, d = steady_k.shape
    rows = torch.arange(b * h, device=pos.device) * cap + pos  # [R] flat token index
    steady_k.view(b * h * cap, d).index_copy_(0, rows, k_new.reshape(b * h, d).to(steady_k.dtype))
    steady_v.view(b * h * cap, d).index_copy_(0, rows, v_new.reshape(b * h, d).to(steady_v.dtype))
    if q is not None and q_dst is not None:
        q_dst.copy_(q)


def _launch_token(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    steady_k: torch.Tensor,
    steady_v: torch.Tensor,
    pos: torch.Tensor,
    q: torch.Tensor | None,
    q_dst: torch.Tensor | None,
) -> None:
    from ._step_io_triton import token_kernel

    b, h, cap, d = steady_k.shape
    for name, t in (("steady_k", steady_k), ("steady_v", steady_v), ("q_dst", q_dst)):
        if t is not None and not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous")
    group = q.shape[1] // h if q is not None else 1
    q_src = q.contiguous() if q is not None else steady_k
    token_kernel[(b * h,)](
        k_new.contiguous(), v_new.contiguous(), steady_k, steady_v, pos.contiguous(), cap,
        q_src, q_dst if q_dst is not None else steady_k,
        HAS_Q=q is not None, G=group, GP=next_pow2(group), D=d, DP=next_pow2(d), num_warps=1,
    )  # fmt: skip
