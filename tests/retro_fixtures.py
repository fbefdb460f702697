"""Shared helpers for the RetroInfer tests: an independent full attention and a layer driver."""

from __future__ import annotations

import torch

from inference_worker.retroinfer import (
    InProcessClusterSource,
    RetroInferConfig,
    RetroInferLayer,
    StepOptions,
)


def full_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Reference: softmax(q k^T / sqrt(D)) v with explicit GQA head expansion, float64.
    q [B, Hq, D]; keys/values [B, Hkv, L, D] -> [B, Hq, D]."""
    group = q.shape[1] // keys.shape[1]
    k = keys.double().repeat_interleave(group, dim=1)  # [B, Hq, L, D]
    v = values.double().repeat_interleave(group, dim=1)
    logits = torch.einsum("bhd,bhld->bhl", q.double(), k) / q.shape[-1] ** 0.5
    return torch.einsum("bhl,bhld->bhd", torch.softmax(logits, dim=-1), v)


def make_layer(
    config: RetroInferConfig,
    hq: int,
    hkv: int,
    d: int,
    batch: int,
    layer: int = 0,
    options: StepOptions | None = None,
) -> tuple[RetroInferLayer, InProcessClusterSource]:
    ids = [f"s{b}" for b in range(batch)]
    source = InProcessClusterSource()
    rl = RetroInferLayer(
        config, layer, hq, hkv, d, source, ids, on_segment=source.put,
        options=options,
    )  # fmt: skip
    return rl, source


def run_decode(
    layer: RetroInferLayer,
    keys: torch.Tensor,
    values: torch.Tensor,
    steps: int,
    gen: torch.Generator,
) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Prefill with keys/values, decode `steps` random tokens; returns (ours, reference, stats)."""
    b, hkv, _, d = keys.shape
    hq = hkv * layer.group
    layer.prefill(keys, values)
    out = []
    for _ in range(steps):
        q = torch.randn(b, hq, d, generator=gen)
        kn, vn = torch.randn(b, hkv, d, generator=gen), torch.randn(b, hkv, d, generator=gen)
        ours, stats = layer.decode(q, kn, vn)
        keys = torch.cat([keys, kn.unsqueeze(2)], dim=2)
        values = torch.cat([values, vn.unsqueeze(2)], dim=2)
        out.append((ours, full_attention(q, keys, values), stats.as_dict()))
    return out
