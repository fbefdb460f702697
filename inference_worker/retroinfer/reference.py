"""The decode step in plain torch: the reference the Triton step (`fast_step.py`) is tested
against, and the step on CPU. It materialises the execution buffer [steady | misses | hits],
fetches the misses through the source (one batched call per layer, on a worker thread for
host-blocking sources while the estimation zone is computed), and implements the opt-in
deferred misses (`RetroInferConfig.defer_misses`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .attention import estimate, merge, partial_attention, rank_clusters
from .misses import Deferred, device_batch, empty_misses
from .state import LayerState
from .stats import step_counts
from .wave_buffer import WaveBuffer, compact_order


@dataclass(slots=True)
class ReferenceResult:
    out: torch.Tensor  # [R, G, D] fp32
    counts: torch.Tensor  # [7] int64 (COUNT_NAMES order)
    retrieved: torch.Tensor  # [R, n_ret] ids attended exactly (-1: empty or overflowed)
    ranked: torch.Tensor  # [R, n_ret + n_est] ids in rank order
    estimated_mask: torch.Tensor  # [R, n_ret + n_est] bool: `ranked` entries estimated
    exec_tokens: int  # tokens per row of the materialised execution buffer


def reference_step(state: LayerState, q: torch.Tensor, pos: torch.Tensor) -> ReferenceResult:
    """One step over every row. q [R, G, D]; pos [R] int64: each row's new token's steady
    position (already written there)."""
    cfg, c, r, d = state.config, state.num_clusters, state.rows, state.head_dim
    defer = cfg.defer_misses and state.decode_steps >= cfg.defer_warmup_steps
    n_ret, n_est = cfg.retrieval_clusters(c), cfg.estimation_clusters(c)
    sizes = state.meta.sizes.reshape(r, c)
    cs = state.meta.centroid_scale
    cs = cs.reshape(r, c) if cs is not None else None
    z, score = rank_clusters(q, state.meta.centroids.reshape(r, c, d), sizes, state.scale, cs)
    top = torch.topk(score, n_ret + n_est, dim=-1, sorted=True).indices  # [R, k]
    top_sizes = sizes.gather(1, top)
    ret, ret_sizes = top[:, :n_ret], top_sizes[:, :n_ret]
    overflow = (ret_sizes > 0) & (ret_sizes.cumsum(1) > state.exec_tokens())  # estimated
    ret_valid = (ret_sizes > 0) & ~overflow
    buffer = state.buffer
    assert buffer is not None, "begin_step builds the wave buffer"
    _admit_deferred(state, buffer)
    hit = buffer.lookup(ret, ret_valid)
    miss = ret_valid & ~hit
    order, kept = compact_order(miss)
    miss_ids = torch.where(kept, ret.gather(1, order), -1)  # [R, n_ret] misses first
    miss_tokens = int(torch.where(miss, ret_sizes, 0).sum(1).max())
    hit_pages = int(torch.where(hit, buffer._pages_of(ret_sizes), 0).sum(1).max())
    width = -(-max(miss_tokens, 1) // 64) * 64
    pending = state.misses.start(miss_ids, width)  # runs while the estimation is computed
    est_keep = torch.cat([overflow | (miss & defer), top_sizes[:, n_ret:] > 0], dim=1)
    z_top = z.gather(2, top.unsqueeze(1).expand(-1, state.group, -1))  # [R, G, k]
    flat_top = (top + (torch.arange(r, device=state.device) * c).view(r, 1)).view(-1)
    vs_top = state.meta.value_sums.reshape(r * c, d).index_select(0, flat_top).view(r, -1, d)
    o_e, lse_e = estimate(z_top, top_sizes, vs_top.float(), est_keep)
    hit_k, hit_v, hit_fill = buffer.hit_pages(ret, hit, max(hit_pages, 1))
    if defer:  # misses estimated now, admitted at this layer's next step
        state.misses.deferred = Deferred(ret, ret_valid, hit, ret_sizes, pending, width)
        miss_k, miss_v, miss_off = empty_misses(r, n_ret, d, state.dtype, state.device)
    else:
        miss_k, miss_v, miss_off = device_batch(pending.result(), r, n_ret, state.device)
    o_x, lse_x = _exact(state, q, pos, miss_k, miss_v, miss_off, hit_k, hit_v, hit_fill)
    admit_valid = ret_valid & hit if defer else ret_valid  # deferred: hits touched only
    admitted = buffer.admit(ret, admit_valid, hit, ret_sizes, miss_k, miss_v, miss_off)
    counts = step_counts(hit, miss, admitted, overflow, ret_valid, ret_sizes)
    out = merge(o_x, lse_x, o_e, lse_e)
    exec_tokens = (
        state.steady_rows()[0].shape[1] + miss_k.shape[1] + hit_k.shape[1] * hit_k.shape[2]
    )
    return ReferenceResult(out, counts, torch.where(ret_valid, ret, -1), top, est_keep, exec_tokens)


def _admit_deferred(state: LayerState, buffer: WaveBuffer) -> None:
    """Deferred mode: admit the previous step's fetched misses before this step's lookup."""
    deferred = state.misses.take_deferred()
    if deferred is not None:
        n = deferred.ret.shape[1]
        k, v, off = device_batch(deferred.pending.result(), state.rows, n, state.device)
        buffer.admit(deferred.ret, deferred.ret_valid, deferred.hit, deferred.ret_sizes, k, v, off)


def _exact(
    state: LayerState,
    q: torch.Tensor,  # [R, G, D]
    pos: torch.Tensor,  # [R]
    miss_k: torch.Tensor,  # [R, M, D]
    miss_v: torch.Tensor,
    miss_off: torch.Tensor,  # [R, n + 1]
    hit_k: torch.Tensor,  # [R, W, pt, D]
    hit_v: torch.Tensor,
    hit_fill: torch.Tensor,  # [R, W]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact attention over the execution buffer [steady | misses | hits]: (o, lse)."""
    r, d, pt = state.rows, state.head_dim, state.config.page_tokens
    st_k, st_v = state.steady_rows()
    cap = st_k.shape[1]
    st_mask = torch.arange(cap, device=state.device) <= pos.unsqueeze(1)  # [R, CAP]
    miss_mask = torch.arange(miss_k.shape[1], device=state.device) < miss_off[:, -1:]
    hit_mask = (torch.arange(pt, device=state.device) < hit_fill.unsqueeze(-1)).reshape(r, -1)
    keys = torch.cat([st_k, miss_k, hit_k.reshape(r, -1, d)], dim=1)  # [R, T, D]
    values = torch.cat([st_v, miss_v, hit_v.reshape(r, -1, d)], dim=1)
    mask = torch.cat([st_mask, miss_mask, hit_mask], dim=1)  # [R, T]
    keys = torch.where(mask.unsqueeze(-1), keys, 0)  # padding rows may hold anything
    values = torch.where(mask.unsqueeze(-1), values, 0)
    return partial_attention(q, keys, values, mask, state.scale)
