"""Stall-free misses: background fetch gives identical results; deferred misses are estimated
for one step and exact (cache hits) from the next."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence

import torch

from inference_worker.retroinfer import (
    FetchedBatch,
    InProcessClusterSource,
    RetroInferConfig,
    RetroInferLayer,
)
from tests.retro_fixtures import full_attention

FULL = {"retrieval_budget": 1.0, "estimation_budget": 0.0}


class BlockingSource(InProcessClusterSource):
    """A host-blocking source (like the KV-store link): not graph-safe, records its thread."""

    def graph_safe(self) -> bool:
        return False

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def fetch(
        self,
        layer: int,
        sequence_ids: Sequence[Hashable],
        cluster_ids: torch.Tensor,
        max_tokens: int,
    ) -> FetchedBatch:
        self.threads.add(threading.current_thread().name)
        return super().fetch(layer, sequence_ids, cluster_ids, max_tokens)


def _layer(config: RetroInferConfig, source: InProcessClusterSource) -> RetroInferLayer:
    ids = ["a", "b"]
    return RetroInferLayer(config, 0, 6, 2, 16, source, ids, on_segment=source.put)


def _steps(layer: RetroInferLayer, steps: int, seed: int) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(2, 2, 1200, 16, generator=gen)
    values = torch.randn(2, 2, 1200, 16, generator=gen)
    layer.prefill(keys, values)
    out = []
    for _ in range(steps):
        q = torch.randn(2, 6, 16, generator=gen)
        kn, vn = torch.randn(2, 2, 16, generator=gen), torch.randn(2, 2, 16, generator=gen)
        ours, stats = layer.decode(q, kn, vn)
        keys = torch.cat([keys, kn.unsqueeze(2)], dim=2)
        values = torch.cat([values, vn.unsqueeze(2)], dim=2)
        out.append((ours, full_attention(q, keys, values), stats.as_dict()))
    return out


def test_background_fetch_matches_inline_fetch() -> None:
    blocking = BlockingSource()
    inline = _steps(_layer(RetroInferConfig(), InProcessClusterSource()), 6, 1)
    background = _steps(_layer(RetroInferConfig(), blocking), 6, 1)
    assert any(name.startswith("wavekv-miss") for name in blocking.threads)
    for (a, _, sa), (b, _, sb) in zip(inline, background, strict=True):
        assert torch.equal(a, b)
        assert sa["misses"] == sb["misses"] and sa["hits"] == sb["hits"]


def test_deferred_misses_are_estimated_then_exact() -> None:
    config = RetroInferConfig(defer_misses=True, defer_warmup_steps=0, **FULL)
    for source in (InProcessClusterSource(), BlockingSource()):
        results = _steps(_layer(config, source), 3, 2)
        (first, ref1, s1), (second, ref2, s2), (third, ref3, _) = results
        assert s1["misses"] > 0 and s1["admitted"] == 0  # nothing waited for in step 1
        assert (first.double() - ref1).abs().max() > 1e-3  # misses were only estimated
        assert s2["misses"] == 0 and s2["hits"] == s1["misses"]  # admitted before step 2
        torch.testing.assert_close(second.double(), ref2, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(third.double(), ref3, atol=2e-5, rtol=1e-4)


def test_deferred_mode_fetches_exactly_while_warming_up() -> None:
    config = RetroInferConfig(defer_misses=True, defer_warmup_steps=1, **FULL)
    (first, ref1, s1), (second, ref2, s2) = _steps(_layer(config, BlockingSource()), 2, 2)
    assert s1["misses"] > 0 and s1["admitted"] == s1["misses"]  # the cold step waited
    torch.testing.assert_close(first.double(), ref1, atol=2e-5, rtol=1e-4)
    assert s2["hits"] >= s1["admitted"]
    torch.testing.assert_close(second.double(), ref2, atol=2e-5, rtol=1e-4)


def test_deferred_mode_is_off_by_default() -> None:
    assert RetroInferConfig().defer_misses is False
    assert RetroInferConfig().defer_warmup_steps == 1
