"""Retrieval quality, sampled on request (`StepOptions.mass_every`): where the exact attention
mass of a decode step's queries falls, by the zone the step gave each key.

The exact softmax is taken over every key of the layer: the steady zone and every cluster,
all fetched from the source (a full read of the layer's context, hence sampled). Zones:
steady (attended exactly), retrieved (attended exactly), estimated (from the cluster's centroid
and value sum) and dropped (neither). A loss of accuracy traces to a layer whose retrieved +
steady mass falls short of 1.
"""

from __future__ import annotations

import torch

from .state import LayerState

ZONES = ("steady", "retrieved", "estimated", "dropped")


def attention_mass(
    state: LayerState,
    q: torch.Tensor,  # [R, G, D] the step's queries
    pos: torch.Tensor,  # [R] int64 each row's new-token position in the steady zone
    retrieved: torch.Tensor,  # [R, n] cluster ids attended exactly (-1: none)
    estimated: torch.Tensor,  # [R, k] cluster ids estimated (-1: none)
) -> torch.Tensor:
    """Fraction of each row's softmax mass per zone (ZONES order), averaged over the G query
    heads: [R, 4] fp32. Free slots' rows are zeros."""
    r, c, d, dev = state.rows, state.num_clusters, state.head_dim, state.device
    sizes = state.meta.sizes.reshape(r, c)  # [R, C] (0: empty or padding)
    ids = torch.where(sizes > 0, torch.arange(c, device=dev), -1)  # [R, C] every cluster
    width = max(int(sizes.sum(1).max()), 1)
    fetched = state.source.fetch(
        state.layer, state.sequence_ids, ids.view(state.batch, state.kv_heads, c), width
    )
    keys = fetched.keys.to(dev).reshape(r, -1, d)  # [R, T, D]
    offsets = fetched.offsets.to(dev).reshape(r, c + 1)  # [R, C + 1]
    t = torch.arange(keys.shape[1], device=dev)  # [T]
    cluster = torch.searchsorted(
        offsets[:, 1:].contiguous(), t.expand(r, -1).contiguous(), right=True
    )
    valid = t < offsets[:, -1:]  # [R, T]
    zone = torch.full((r, c + 1), 3, dtype=torch.int64, device=dev)  # dropped
    zone.scatter_(1, torch.where(estimated >= 0, estimated, c), 2)
    zone.scatter_(1, torch.where(retrieved >= 0, retrieved, c), 1)
    token_zone = zone.gather(1, cluster.clamp(max=c))  # [R, T]
    st_k, _ = state.steady_rows()  # [R, CAP, D]
    st_valid = torch.arange(st_k.shape[1], device=dev) <= pos.unsqueeze(1)  # [R, CAP]
    all_k = torch.cat([st_k, keys], dim=1).float()  # [R, CAP + T, D]
    all_valid = torch.cat([st_valid, valid], dim=1)
    logits = torch.einsum("rgd,rtd->rgt", q.float(), all_k) * state.scale  # [R, G, CAP + T]
    p = torch.softmax(logits.masked_fill(~all_valid.unsqueeze(1), float("-inf")), dim=-1)
    p = p.nan_to_num(0.0).mean(1)  # [R, CAP + T]
    all_zone = torch.cat([torch.zeros_like(st_valid, dtype=torch.int64), token_zone], dim=1)
    mass = torch.zeros(r, len(ZONES), device=dev).scatter_add_(1, all_zone, p)
    held = torch.tensor([s is not None for s in state.sequence_ids], device=dev)
    return mass * held.repeat_interleave(state.kv_heads).unsqueeze(1)


class MassMeter:
    """Per batch slot: the sum of sampled zone fractions (averaged over KV heads) and the
    number of samples, for the slot's current sequence."""

    def __init__(self, batch: int, kv_heads: int) -> None:
        self.kv_heads = kv_heads
        self.sums = [[0.0] * len(ZONES) for _ in range(batch)]
        self.samples = [0] * batch

    def add(self, mass: torch.Tensor, slots: list[int]) -> None:
        """mass [R, 4] from attention_mass; `slots`: the held ones (the others are skipped)."""
        per_slot = mass.view(-1, self.kv_heads, len(ZONES)).mean(1).tolist()  # [B, 4]
        for slot in slots:
            self.sums[slot] = [a + b for a, b in zip(self.sums[slot], per_slot[slot], strict=True)]
            self.samples[slot] += 1

    def reset(self, slot: int) -> None:
        self.sums[slot], self.samples[slot] = [0.0] * len(ZONES), 0

    def grow(self, batch: int) -> None:
        extra = batch - len(self.samples)
        self.sums.extend([0.0] * len(ZONES) for _ in range(extra))
        self.samples.extend([0] * extra)

    def summary(self, slot: int) -> dict[str, float] | None:
        """Mean fraction per zone over the slot's samples (None: not sampled)."""
        n = self.samples[slot]
        if n == 0:
            return None
        return {"samples": n, **{z: s / n for z, s in zip(ZONES, self.sums[slot], strict=True)}}
