"""Batch slots: sequences of different lengths join and leave a layer between steps; each one's
outputs equal those of a layer of its own (and full attention at a 100% retrieval budget),
index updates happen per slot, a free slot changes nothing, and the per-slot counters add up."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer import InProcessClusterSource, RetroInferConfig, RetroInferLayer
from tests.retro_fixtures import full_attention

HQ, HKV, D = 6, 2, 16
# everything retrieved: outputs are exact attention, whatever the batch around a sequence
FULL = RetroInferConfig(
    sink_tokens=4, window_tokens=8, update_tokens=16, update_clusters=2,
    retrieval_budget=1.0, estimation_budget=0.0, min_retrieval_clusters=0,
)  # fmt: skip


class _Seq:
    """A sequence's prompt and its stream of decode inputs (fixed by its seed)."""

    def __init__(self, name: str, length: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.name = name
        self.keys = torch.randn(1, HKV, length, D, generator=gen)
        self.values = torch.randn(1, HKV, length, D, generator=gen)
        self.steps = [
            (torch.randn(1, HQ, D, generator=gen), torch.randn(2, 1, HKV, D, generator=gen))
            for _ in range(60)
        ]
        self.done = 0

    def take(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, kv = self.steps[self.done]
        self.done += 1
        self.keys = torch.cat([self.keys, kv[0].unsqueeze(2)], dim=2)
        self.values = torch.cat([self.values, kv[1].unsqueeze(2)], dim=2)
        return q, kv[0], kv[1]


def _layer(config: RetroInferConfig, slots: int) -> RetroInferLayer:
    source = InProcessClusterSource()
    return RetroInferLayer(config, 0, HQ, HKV, D, source, [None] * slots, on_segment=source.put)


def _step(layer: RetroInferLayer, held: dict[int, _Seq]) -> dict[str, tuple]:
    """One step of every slot (free ones get zeros): {name: (output, full attention)}."""
    q = torch.zeros(layer.batch, HQ, D)
    k, v = torch.zeros(layer.batch, HKV, D), torch.zeros(layer.batch, HKV, D)
    for slot, seq in held.items():
        q[slot], k[slot], v[slot] = (t[0] for t in seq.take())
    out, stats = layer.decode(q, k, v)
    want = {
        seq.name: (out[slot], full_attention(q[slot : slot + 1], seq.keys, seq.values)[0])
        for slot, seq in held.items()
    }
    return want | {"_stats": stats}  # type: ignore[dict-item]


def _solo(seq: _Seq, steps: int) -> list[torch.Tensor]:
    """The sequence alone in a layer of one slot: its outputs."""
    alone = _Seq(seq.name, seq.keys.shape[2] - seq.done, 0)
    alone.keys, alone.values, alone.steps = seq.keys, seq.values, seq.steps
    layer = _layer(FULL, 1)
    n = alone.keys.shape[2] - seq.done
    layer.admit([0], [seq.name], alone.keys[:, :, :n], alone.values[:, :, :n])
    alone.keys, alone.values = alone.keys[:, :, :n], alone.values[:, :, :n]
    return [_step(layer, {0: alone})[seq.name][0] for _ in range(steps)]


def test_sequences_join_and_leave_with_their_own_outputs() -> None:
    layer = _layer(FULL, 3)
    a, b, c = _Seq("a", 150, 1), _Seq("b", 60, 2), _Seq("c", 20, 3)  # c: below the threshold
    outs: dict[str, list[torch.Tensor]] = {"a": [], "b": [], "c": []}
    layer.admit([1], ["a"], a.keys, a.values)
    held = {1: a}
    for step in range(40):
        if step == 5:  # b joins slot 0, a longer prompt already running beside it
            layer.admit([0], ["b"], b.keys, b.values)
            held[0] = b
        if step == 20:  # a leaves, c takes its slot
            layer.release(1)
            del held[1]
            layer.admit([1], ["c"], c.keys, c.values)
            held[1] = c
        result = _step(layer, held)
        result.pop("_stats")
        for name, (got, want) in result.items():
            torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
            outs[name].append(got)
    assert layer.sequence_ids == ["b", "c", None]
    assert layer.meta.counts[0] > 0 and layer.meta.counts[1] > 0  # c indexed by its updates
    for seq in (a, b, c):  # the same as alone (the same inputs, a layer of its own)
        alone = _solo(seq, len(outs[seq.name]))
        torch.testing.assert_close(torch.stack(outs[seq.name]), torch.stack(alone), atol=1e-5,
                                   rtol=1e-5)  # fmt: skip


def test_index_updates_run_per_slot() -> None:
    layer = _layer(FULL, 2)
    a, b = _Seq("a", 100, 4), _Seq("b", 107, 5)
    layer.admit([0], ["a"], a.keys, a.values)
    for _ in range(5):  # b joins later: its recent window fills at another step
        _step(layer, {0: a})
    layer.admit([1], ["b"], b.keys, b.values)
    updates = []
    for _ in range(30):
        stats = _step(layer, {0: a, 1: b})["_stats"]
        updates.append([owners for owners, _ in stats.new_segments])  # type: ignore[attr-defined]
    flat = [o for step in updates for group in step for o in group]
    assert flat.count("a") >= 1 and flat.count("b") >= 1
    first_a = next(i for i, s in enumerate(updates) if any("a" in g for g in s))
    first_b = next(i for i, s in enumerate(updates) if any("b" in g for g in s))
    assert first_a != first_b  # each slot at its own point


def test_free_slots_and_per_slot_counters() -> None:
    config = RetroInferConfig(
        sink_tokens=4, window_tokens=8, update_tokens=16, update_clusters=2, cache_ratio=0.2,
        min_retrieval_clusters=4,
    )  # fmt: skip
    layer = _layer(config, 3)
    a = _Seq("a", 300, 6)
    layer.admit([2], ["a"], a.keys, a.values)
    totals = {"hits": 0, "misses": 0}
    for _ in range(12):
        stats = _step(layer, {2: a})["_stats"].as_dict()  # type: ignore[attr-defined]
        for name in totals:
            totals[name] += stats[name]
    counters = layer.counters(2)
    assert counters["hits"] == totals["hits"] and counters["misses"] == totals["misses"]
    assert totals["hits"] > 0
    assert layer.counters(0) == {"hits": 0, "misses": 0, "evicted": 0}


def test_admission_errors_name_the_slot() -> None:
    layer = _layer(FULL, 2)
    a = _Seq("a", 50, 7)
    layer.admit([0], ["a"], a.keys, a.values)
    with pytest.raises(ValueError, match=r"slot 0 is not a free slot of \[0, 2\)"):
        layer.admit([0], ["x"], a.keys, a.values)
    with pytest.raises(ValueError, match=r"slot 5 is not a free slot"):
        layer.admit([5], ["x"], a.keys, a.values)
    with pytest.raises(ValueError, match="distinct slots, one per sequence"):
        layer.admit([1, 1], ["x", "y"], a.keys, a.values)
    with pytest.raises(RuntimeError, match="prefill\\(\\) needs every slot held"):
        _layer(FULL, 2).prefill(torch.cat([a.keys, a.keys]), torch.cat([a.values, a.values]))
