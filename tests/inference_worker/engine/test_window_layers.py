"""RetroInfer on a hybrid model (Gemma 3: sliding-window and global layers): the window layers
keep device rings per slot, only the global layers are indexed and stored."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from client import SequenceGeometry
from inference_worker.engine import EngineConfig, GenerationEngine, GenerationRequest
from inference_worker.engine.retro_backend import RetroInferBackend
from inference_worker.engine.store_link import InProcessStoreLink
from inference_worker.engine.window_layers import WindowLayers
from inference_worker.model import AttentionMetadata, FullAttentionBackend, ModelConfig
from inference_worker.retroinfer import IndexSegment, RetroInferConfig, StepOptions
from tests.engine_fixtures import essay_tokens, tiny_gemma3_engine
from tests.inference_worker.engine.test_retro_backend import forced_logits

EVERYTHING = RetroInferConfig(retrieval_budget=1.0, estimation_budget=0.0)


class RecordingLink(InProcessStoreLink):
    """The in-process link, recording the geometry it was opened with and the layers stored."""

    def __init__(self) -> None:
        super().__init__()
        self.geometries: list[SequenceGeometry] = []
        self.layers: set[int] = set()

    def open(self, sequence_ids: Sequence[str], geometry: SequenceGeometry) -> None:
        self.geometries.append(geometry)
        super().open(sequence_ids, geometry)

    def upload(self, sequence_ids: Sequence[str], segment: IndexSegment) -> None:
        self.layers.add(segment.layer)
        super().upload(sequence_ids, segment)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> GenerationEngine:
    return tiny_gemma3_engine(tmp_path_factory.mktemp("gemma3"))


def _requests(vocab: int, shapes: list[tuple[int, int]]) -> list[GenerationRequest]:
    gen = torch.Generator().manual_seed(3)
    return [
        GenerationRequest(f"r{i}", torch.randint(3, vocab, (n,), generator=gen).tolist(), m)
        for i, (n, m) in enumerate(shapes)
    ]


def test_hybrid_retroinfer_at_full_budget_is_full_attention(tiny: GenerationEngine) -> None:
    """2 slots, 3 prompts of different lengths (slots reused), decode past the window: greedy
    tokens equal full attention's; the store holds the 2 global layers only."""
    config = tiny.loaded.config
    assert config.global_layers == (1, 4) and config.sliding_window == 48
    reqs = _requests(config.vocab_size, [(1200, 9), (1450, 60), (1150, 7)])
    link = RecordingLink()
    retro = tiny.with_config(EngineConfig(retro=EVERYTHING, max_batch_size=2), link)
    together = retro.generate(reqs)
    full = tiny.with_config(EngineConfig(attention="full", max_batch_size=2)).generate(reqs)
    assert [r.token_ids for r in together] == [r.token_ids for r in full]
    assert {g.num_layers for g in link.geometries} == {2} and link.layers == {0, 1}
    for r in together:
        assert r.stats["indexed"] and r.stats["indexed_layers"] == 2
        assert r.stats["retrieved_fraction"] == 1.0 and r.stats["hits"] + r.stats["misses"] > 0


def test_hybrid_default_budget_decodes_and_counts_indexed_layers(tiny: GenerationEngine) -> None:
    """At the default budgets part of each global layer is retrieved; the statistics count
    the global layers' clusters only."""
    (result,) = tiny.with_config(EngineConfig()).generate(
        _requests(tiny.loaded.config.vocab_size, [(1600, 5)])
    )
    stats = result.stats
    assert len(result.token_ids) == 5 and stats["indexed_layers"] == 2
    assert 0 < stats["retrieved_fraction"] < 1 and stats["num_clusters"] > 0


@torch.inference_mode()
def test_hybrid_logits_at_full_budget_equal_full_attention(tiny: GenerationEngine) -> None:
    """Teacher-forced logits (prefill in chunks, then 80 steps past the window) of RetroInfer
    with every cluster retrieved equal full attention's: the window layers' rings and the
    global layers' softmax scale (query_pre_attn_scalar, not head_dim) included."""
    loaded = tiny.loaded
    assert loaded.config.attention_scale != loaded.config.head_dim**-0.5
    gen = torch.Generator().manual_seed(11)
    tokens = torch.randint(3, loaded.config.vocab_size, (1280,), generator=gen).tolist()
    prompt, forced = tokens[:1200], tokens[1200:]
    full = forced_logits(loaded, loaded.new_full_attention(1, len(tokens)), prompt, forced)
    backend = RetroInferBackend(
        loaded.config, EVERYTHING, InProcessStoreLink(), 1, loaded.dtype, loaded.device
    )
    backend.begin_prefill(0, "s", len(prompt))
    retro = forced_logits(loaded, backend, prompt, forced)
    assert backend.layers[0].num_clusters > 0  # indexed, not the dense path
    torch.testing.assert_close(retro, full, atol=1e-4, rtol=1e-4)


def _ring_model(window: int) -> ModelConfig:
    return ModelConfig(
        family="gemma3", vocab_size=16, hidden_size=32, intermediate_size=32, num_layers=3,
        num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=512,
        layer_types=("sliding_attention", "full_attention", "sliding_attention"),
        sliding_window=window,
    )  # fmt: skip


@pytest.mark.parametrize("prompt_len", [70, 20])  # longer and shorter than the window
@torch.inference_mode()
def test_rings_move_into_a_slot_and_decode_like_the_dense_cache(prompt_len: int) -> None:
    """A prompt prefilled in a 1-row dense cache, its rings taken into slot 2 of 3 (after a
    grow from 2): decode steps of that slot equal the dense cache's, on fresh random K/V."""
    config, torch_gen = _ring_model(window=32), torch.Generator().manual_seed(prompt_len)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=torch_gen)

    dense = FullAttentionBackend.for_model(config, 1, prompt_len + 40)
    meta = AttentionMetadata.prefill([0], [prompt_len])
    for layer in (0, 2):
        dense.prefill(layer, rand(1, 4, prompt_len, 8), rand(1, 2, prompt_len, 8),
                      rand(1, 2, prompt_len, 8), meta)  # fmt: skip
    window = WindowLayers(config, 2, torch.float32, torch.device("cpu"))
    window.grow(3)
    for layer in (0, 2):
        window.take(layer, 2, dense)
    for step in range(40):  # past the window
        pos = prompt_len + step
        q, k, v = rand(1, 4, 1, 8), rand(1, 2, 1, 8), rand(1, 2, 1, 8)
        want = dense.decode(0, q, k, v, AttentionMetadata.decode([pos]))
        # slot 2 holds the sequence; slots 0 and 1 are free (position 0)
        meta3 = AttentionMetadata.decode([0, 0, pos])
        got = window.decode(0, q.expand(3, -1, -1, -1), k.expand(3, -1, -1, -1),
                            v.expand(3, -1, -1, -1), meta3)  # fmt: skip
        torch.testing.assert_close(got[2:], want, atol=1e-6, rtol=0)


def test_a_model_without_global_layers_is_refused() -> None:
    config = replace(_ring_model(window=32), layer_types=("sliding_attention",) * 3)
    with pytest.raises(ValueError, match="every layer sliding-window: RetroInfer has nothing"):
        RetroInferBackend(config, RetroInferConfig(), InProcessStoreLink(), 1, torch.float32,
                          torch.device("cpu"))  # fmt: skip


@pytest.mark.slow
def test_gemma3_270m_at_full_budget_is_full_attention(tmp_path: Path) -> None:
    """The real Gemma 3 270M on CPU: RetroInfer with every cluster retrieved gives full
    attention's greedy tokens (prompts past the 512-token window, 2 slots)."""
    engine = GenerationEngine.load("gemma3-270m", device="cpu")
    reqs = [
        GenerationRequest(f"g{i}", essay_tokens(engine, n, seed=40 + i), max_new_tokens=m)
        for i, (n, m) in enumerate([(1200, 6), (1300, 4)])
    ]
    retro = engine.with_config(EngineConfig(retro=EVERYTHING, max_batch_size=2)).generate(reqs)
    full = engine.with_config(EngineConfig(attention="full", max_batch_size=2)).generate(reqs)
    assert [r.token_ids for r in retro] == [r.token_ids for r in full]
    assert all(r.stats["indexed_layers"] == 3 for r in retro)


def test_attention_mass_is_reported_per_indexed_layer(tiny: GenerationEngine) -> None:
    """StepOptions.mass_every through EngineConfig: each global (indexed) model layer reports
    where its attention mass fell, sampled every 2nd decode step."""
    options = StepOptions(mass_every=2)
    (result,) = tiny.with_config(EngineConfig(step_options=options)).generate(
        _requests(tiny.loaded.config.vocab_size, [(1300, 6)])
    )
    mass = result.stats["attention_mass"]
    assert set(mass) == {"1", "4"}  # the global layers (model numbering)
    for zones in mass.values():
        assert zones["samples"] == 3  # decode steps 0, 2, 4 of 5
        total = zones["steady"] + zones["retrieved"] + zones["estimated"] + zones["dropped"]
        assert total == pytest.approx(1.0, abs=1e-5)
