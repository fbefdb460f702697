"""Whole-step RetroInfer decode: the fixed-step backend (CPU) and its CUDA graph (CUDA only)
against the eager path (each layer's decode() with the same fixed widths)."""

from __future__ import annotations

import pytest
import torch

from inference_worker.model import AttentionMetadata, CausalLM, ModelConfig, build_model
from inference_worker.model.retro_graph import FixedStepBackend, GraphedRetroDecoder
from inference_worker.retroinfer import InProcessClusterSource, RetroInferConfig, RetroInferLayer

TINY = ModelConfig(
    family="llama", vocab_size=256, hidden_size=128, intermediate_size=256, num_layers=3,
    num_heads=4, num_kv_heads=2, head_dim=64, max_position_embeddings=4096,
)  # fmt: skip
# small window/update so an index update (and a re-capture) happens within 30 steps
RETRO = RetroInferConfig(
    window_tokens=16, update_tokens=24, update_clusters=4, min_retrieval_clusters=8,
    cache_clusters_factor=2.0, exec_buffer_min_clusters=8,
)  # fmt: skip
BATCH, PROMPT, STEPS = 2, 700, 30


def _model(device: str) -> CausalLM:
    with torch.device("meta"):
        shell = CausalLM(TINY)
    gen = torch.Generator().manual_seed(5)
    state = {}
    for name, p in shell.state_dict().items():
        w = torch.empty(p.shape).normal_(0.0, 0.08, generator=gen)
        state[name] = w.abs() + 0.5 if "norm" in name else w
    return build_model(TINY, state, torch.device(device))


def _layers(device: str, seed: int = 1) -> list[RetroInferLayer]:
    """Synthesized prefill state: random K/V [B, Hkv, L, D] per layer, clustered for real."""
    ids = [f"s{b}" for b in range(BATCH)]
    source = InProcessClusterSource()
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for i in range(TINY.num_layers):
        layer = RetroInferLayer(
            RETRO, i, TINY.num_heads, TINY.num_kv_heads, TINY.head_dim, source, ids,
            device=device, on_segment=source.put,
        )  # fmt: skip
        kv = torch.randn(2, BATCH, TINY.num_kv_heads, PROMPT, TINY.head_dim, generator=gen)
        layer.prefill(kv[0].to(device), kv[1].to(device))
        layers.append(layer)
    return layers


class _Decode:
    """The eager path: each layer's decode()."""

    def __init__(self, layers: list[RetroInferLayer]) -> None:
        self.layers, self.stats = layers, []

    def decode(self, layer, q, k, v, meta):
        out, stats = self.layers[layer].decode(q[:, :, 0], k[:, :, 0], v[:, :, 0])
        self.stats.append(stats)
        return out.unsqueeze(2)


def _eager_run(model: CausalLM, layers: list[RetroInferLayer]) -> list[tuple]:
    """Greedy steps through decode(): (logits [B, V], per-layer stat dicts) per step."""
    backend, out = _Decode(layers), []
    tokens = torch.arange(BATCH, device=model.device)[:, None] + 7  # [B, 1]
    for step in range(STEPS):
        backend.stats = []
        meta = AttentionMetadata.decode([PROMPT + step] * BATCH, model.device)
        logits = model(tokens, meta, backend, last_only=True)  # type: ignore[arg-type]
        out.append((logits.clone(), [s.as_dict() for s in backend.stats]))
        tokens = logits.argmax(-1, keepdim=True)
    return out


def _assert_same(got: list[tuple], ref: list[tuple], atol: float) -> None:
    for step, ((logits, stats), (ref_logits, ref_stats)) in enumerate(zip(got, ref, strict=True)):
        torch.testing.assert_close(logits, ref_logits, atol=atol, rtol=0, msg=f"step {step}")
        assert stats == ref_stats, f"step {step}"
    assert any(s["index_update"] for _, stats in ref for s in stats)
    assert sum(s["hits"] for _, stats in ref for s in stats) > 0


def _assert_same_state(a: list[RetroInferLayer], b: list[RetroInferLayer], atol: float) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.buffer is not None and y.buffer is not None
        assert x.steady.lengths == y.steady.lengths and x.num_clusters == y.num_clusters
        n, p = max(x.steady.lengths), x.buffer.pages
        for s, t in zip(x.buffer._state(), y.buffer._state(), strict=True):
            if s.dim() == 4:  # keys, values [R, P + 1, pt, D]: the scratch page (index p)
                s, t = s[:, :p], t[:, :p]  # absorbs masked writes in any order (many threads)
            torch.testing.assert_close(s, t, atol=atol, rtol=0)
        torch.testing.assert_close(
            x.steady.keys[:, :, :n], y.steady.keys[:, :, :n], atol=atol, rtol=0
        )


@torch.inference_mode()
def test_fixed_step_backend_equals_decode_on_cpu() -> None:
    model = _model("cpu")
    ref_layers, layers = _layers("cpu"), _layers("cpu")
    ref = _eager_run(model, ref_layers)
    backend, got = FixedStepBackend(dict(enumerate(layers))), []
    tokens = torch.arange(BATCH)[:, None] + 7
    assert not backend.supported()  # CPU: the reference step, not capturable
    for step in range(STEPS):
        backend.prepare()
        meta = AttentionMetadata.decode([PROMPT + step] * BATCH, "cpu")
        logits = model(tokens, meta, backend, last_only=True)  # type: ignore[arg-type]
        stats = backend.finish(torch.stack(backend.counts), backend.exec_tokens)
        got.append((logits, [s.as_dict() for s in stats]))
        tokens = logits.argmax(-1, keepdim=True)
    _assert_same(got, ref, atol=0.0)
    _assert_same_state(layers, ref_layers, atol=0.0)


def test_fixed_step_backend_and_decoder_reject_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least one RetroInferLayer, got 0"):
        FixedStepBackend({})
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA model, got device=cpu"):
        GraphedRetroDecoder(_model("cpu"), {})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@torch.inference_mode()
def test_graphed_retro_decoder_equals_eager_on_cuda() -> None:
    model = _model("cuda")
    ref_layers, layers = _layers("cuda"), _layers("cuda")
    ref = _eager_run(model, ref_layers)
    with pytest.raises(ValueError, match=r"a window backend for the others \(\[2\]\)"):
        GraphedRetroDecoder(model, dict(enumerate(layers[:2])))
    decoder, got = GraphedRetroDecoder(model, dict(enumerate(layers))), []
    tokens = torch.arange(BATCH, device="cuda") + 7
    with pytest.raises(ValueError, match="need 2 tokens and start positions, got 2 and 1"):
        decoder.step(tokens, [PROMPT])
    for step in range(STEPS):
        logits, stats = decoder.step(tokens, [PROMPT + step] * BATCH)
        got.append((logits.clone(), [s.as_dict() for s in stats]))
        tokens = logits.argmax(-1)
    _assert_same(got, ref, atol=1e-4)
    _assert_same_state(layers, ref_layers, atol=1e-5)
    assert decoder.eager_steps == 0
    assert decoder.captures == 2  # the index update changed the shapes once
