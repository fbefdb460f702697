"""A decode step's inputs into the layer's buffers and its outputs out of them, one kernel each.

Between two CUDA-graph replays of a layer step (eight small torch kernels otherwise):
`load_step` writes the new token's K/V into the steady zone at its position, the query into the
graph's static query buffer and the position into its device tensor; `unload_step` copies the
output (cast to the caller's dtype) and the step counts out of the graph's buffers, which the
next replay overwrites. `write_token` is the steady-zone write alone at a device-side position
(inside a captured step, where the position is only known on the device).
"""

from __future__ import annotations

import torch

from .availability import pick
from .sizes import cdiv, next_pow2

UNLOAD_BLOCK = 2048  # output elements per unload program


def load_step(
    k_new: torch.Tensor,  # [B, Hkv, D] the new token's keys
    v_new: torch.Tensor,  # [B, Hkv, D] its values
    steady_k: torch.Tensor,  # [B, Hkv, cap, D] steady-zone keys (written at `position`)
    steady_v: torch.Tensor,  # [B, Hkv, cap, D]
    pos: torch.Tensor,  # [1] int64: set to `position`
    position: int,
    q: torch.Tensor | None = None,  # [B, Hq, D] the step's query, copied into q_dst
    q_dst: torch.Tensor | None = None,  # [B, Hq, D] in its own dtype
    use_triton: bool | None = None,
) -> None:
    """Writes the new token at `position` of the steady zone, `position` into `pos` and q into
    q_dst (cast to the buffers' dtypes). One kernel on the Triton path."""
    cap = steady_k.shape[2]
    if not 0 <= position < cap:
        raise ValueError(f"position must be in [0, {cap}), got {position}")
    if (q is None) != (q_dst is None):
        raise ValueError("q and q_dst go together")
    if not pick(use_triton, steady_k):
        load_step_reference(k_new, v_new, steady_k, steady_v, pos, position, q, q_dst)
        return
    _launch_token(k_new, v_new, steady_k, steady_v, pos, position, q, q_dst)


def write_token(
    k_new: torch.Tensor,  # [B, Hkv, D]
    v_new: torch.Tensor,  # [B, Hkv, D]
    steady_k: torch.Tensor,  # [B, Hkv, cap, D]
    steady_v: torch.Tensor,  # [B, Hkv, cap, D]
    pos: torch.Tensor,  # [1] int64 device-side position (no host synchronisation)
    use_triton: bool | None = None,
) -> None:
    """steady[:, :, pos] = new token (capturable: the position is read on the device)."""
    if not pick(use_triton, steady_k):
        steady_k.index_copy_(2, pos, k_new.unsqueeze(2).to(steady_k.dtype))
        steady_v.index_copy_(2, pos, v_new.unsqueeze(2).to(steady_v.dtype))
        return
    _launch_token(k_new, v_new, steady_k, steady_v, pos, None, None, None)


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
    position: int,
    q: torch.Tensor | None = None,
    q_dst: torch.Tensor | None = None,
) -> None:
    """torch reference of load_step."""
    pos.fill_(position)
    steady_k[:, :, position] = k_new.to(steady_k.dtype)
    steady_v[:, :, position] = v_new.to(steady_v.dtype)
    if q is not None and q_dst is not None:
        q_dst.copy_(q)


def _launch_token(
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    steady_k: torch.Tensor,
    steady_v: torch.Tensor,
    pos: torch.Tensor,
    position: int | None,
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
        k_new.contiguous(), v_new.contiguous(), steady_k, steady_v, pos,
        position if position is not None else 0, cap, q_src,
        q_dst if q_dst is not None else steady_k,
        SET_POS=position is not None, HAS_Q=q is not None, G=group, GP=next_pow2(group),
        D=d, DP=next_pow2(d), num_warps=1,
    )  # fmt: skip
