"""CUDA-only checks (skipped without a GPU): a layer step replayed from a CUDA graph (LayerGraph)
vs the eager step."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer import (
    InProcessClusterSource,
    LayerGraph,
    RetroInferConfig,
    RetroInferLayer,
)
from tests.retro_fixtures import full_attention

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _layer(config, dtype, hq=32, hkv=8, d=128, batch=2):
    ids = [f"s{b}" for b in range(batch)]
    source = InProcessClusterSource()
    return RetroInferLayer(
        config,
        0,
        hq,
        hkv,
        d,
        source,
        ids,
        dtype=dtype,
        device="cuda",
        on_segment=source.put,
    )


def _inputs(dtype, length, steps, hq=32, hkv=8, d=128, batch=2):
    gen = torch.Generator(device="cuda").manual_seed(0)
    kv = torch.randn(2, batch, hkv, length, d, generator=gen, device="cuda").to(dtype)
    q0 = torch.randn(batch, hq, d, generator=gen, device="cuda") * 2
    step = [
        (
            (q0 + torch.randn(batch, hq, d, generator=gen, device="cuda")).to(dtype),
            torch.randn(2, batch, hkv, d, generator=gen, device="cuda").to(dtype),
        )
        for _ in range(steps)
    ]
    return kv, step


def test_graph_path_matches_eager_path_bf16():
    kv, steps = _inputs(torch.bfloat16, 20000, 12)
    runs = []
    for graph in (False, True):
        layer = _layer(RetroInferConfig(cache_ratio=0.03), torch.bfloat16)
        layer.prefill(kv[0], kv[1])
        run = LayerGraph(layer).decode if graph else layer.decode
        runs.append([run(q, n[0], n[1]) for q, n in steps])
    for (o1, s1), (o2, s2) in zip(*runs, strict=True):
        torch.testing.assert_close(o1.float(), o2.float(), atol=2e-2, rtol=2e-2)
        d1, d2 = s1.as_dict(), s2.as_dict()
        d1.pop("exec_tokens"), d2.pop("exec_tokens")
        assert d1 == d2
    assert sum(s.as_dict()["hits"] for _, s in runs[1]) > 0


def test_graph_path_full_retrieval_is_full_attention_fp32():
    kv, steps = _inputs(torch.float32, 3001, 6, hq=9, hkv=3, d=64, batch=1)
    layer = _layer(
        RetroInferConfig(retrieval_budget=1.0, estimation_budget=0.0),
        torch.float32,
        hq=9,
        hkv=3,
        d=64,
        batch=1,
    )
    layer.prefill(kv[0], kv[1])
    graph = LayerGraph(layer)
    keys, values = kv[0], kv[1]
    kept = []
    for q, new in steps:
        out, _ = graph.decode(q, new[0], new[1])
        keys = torch.cat([keys, new[0].unsqueeze(2)], dim=2)
        values = torch.cat([values, new[1].unsqueeze(2)], dim=2)
        kept.append((out, full_attention(q, keys, values)))
        torch.testing.assert_close(out.double(), kept[-1][1], atol=1e-4, rtol=1e-3)
    assert graph.captures == 1
    for out, want in kept:  # outputs kept across replays are not the graph's reused buffer
        torch.testing.assert_close(out.double(), want, atol=1e-4, rtol=1e-3)
