"""Our model vs transformers on tiny random models of every family switch (fast), Gemma 3's
local/global layers included."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from inference_worker.model import AttentionMetadata, CausalLM, FullAttentionBackend, build_model
from inference_worker.model.safetensors_loader import load_safetensors_state_dict
from tests.model_fixtures import (
    LLAMA3_ROPE,
    hf_logits,
    load_ours,
    prefill_logits,
    save_tiny,
    tiny_hf_model,
)

ATOL = 2e-4
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama_untied": ("llama", {"tie_word_embeddings": False}),
    "llama_tied": ("llama", {"tie_word_embeddings": True}),
    "llama_bias": ("llama", {"attention_bias": True, "mlp_bias": True}),
    "llama3_rope": ("llama", {"rope_parameters": LLAMA3_ROPE}),
    "llama_linear_rope": ("llama", {"rope_parameters": {"rope_type": "linear", "factor": 2.0}}),
    "llama_mha_headdim": ("llama", {"num_key_value_heads": 4, "head_dim": 32}),
    "qwen2_bias_tied": ("qwen2", {"tie_word_embeddings": True, "use_sliding_window": False}),
    "mistral": ("mistral", {"sliding_window": None}),
    "mistral_window": ("mistral", {"sliding_window": 5}),
    "gemma3_tied": ("gemma3", {}),  # tests/model_fixtures.py TINY_GEMMA3: every Gemma 3 switch
    "gemma3_untied_global_first": (
        "gemma3",
        {
            "tie_word_embeddings": False,
            "layer_types": ["full_attention"] + ["sliding_attention"] * 4,
        },
    ),
}


def _ids(n: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (n,), generator=g).tolist()


@pytest.fixture(params=sorted(CASES), scope="module")
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    family, overrides = CASES[request.param]
    hf = tiny_hf_model(family, **overrides)
    folder = save_tiny(hf, tmp_path_factory.mktemp(request.param))
    return request.param, hf, load_ours(folder)


def test_config_switches(pair) -> None:
    name, _, ours = pair
    c = ours.config
    assert c.qkv_bias == (name in ("qwen2_bias_tied", "llama_bias"))
    assert c.o_bias == (name == "llama_bias")
    assert c.tie_word_embeddings == name.endswith("_tied")
    gemma = name.startswith("gemma3")  # tiny Gemma 3: linear RoPE scaling on global layers
    assert (c.rope_scaling is not None) == (name.endswith("rope") or gemma)
    assert c.sliding_window == (5 if name == "mistral_window" or gemma else None)
    assert (c.qk_norm, c.sandwich_norms, c.norm_unit_offset, c.scale_embeddings) == (gemma,) * 4
    if name == "gemma3_tied":
        assert c.global_layers == (1, 4) and c.local_layers == (0, 2, 3)
        assert c.layer_windows == (5, None, 5, 5, None) and c.rope_local_theta == 100.0
        assert c.attention_scale == 24**-0.5 and c.final_logit_softcapping == 5.0
    if c.tie_word_embeddings:
        assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_prefill_logits_match_transformers(pair) -> None:
    _, hf, ours = pair
    ids = _ids(23, seed=1)
    torch.testing.assert_close(prefill_logits(ours, ids), hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_step_decode_matches_transformers(pair) -> None:
    _, hf, ours = pair
    ids = _ids(20, seed=2)  # 14 decode steps: past the 5-token window of the windowed cases
    ref = hf_logits(hf, ids)  # [T, V]
    backend = FullAttentionBackend.for_model(ours.config, 1, 64)
    got = [_run(ours, backend, ids[:6], AttentionMetadata.prefill([0], [6]))[-1]]
    for pos in range(6, len(ids)):
        got.append(_run(ours, backend, [ids[pos]], AttentionMetadata.decode([pos]))[0])
    torch.testing.assert_close(torch.stack(got), ref[5:], atol=ATOL, rtol=0)


def _run(model: CausalLM, backend, ids: list[int], meta: AttentionMetadata) -> torch.Tensor:
    with torch.inference_mode():
        return model(torch.tensor([ids]), meta, backend)[0]  # [T, V]


def test_llama3_rope_changes_logits(tmp_path: Path) -> None:
    """The scaling switch is not a no-op at these sizes (guards the llama3 test's power)."""
    plain = load_ours(save_tiny(tiny_hf_model("llama"), tmp_path / "plain"))
    scaled = load_ours(
        save_tiny(tiny_hf_model("llama", rope_parameters=LLAMA3_ROPE), tmp_path / "scaled")
    )
    ids = _ids(40, seed=3)
    assert not torch.allclose(prefill_logits(plain, ids), prefill_logits(scaled, ids), atol=1e-3)


@pytest.mark.parametrize(
    "change",
    [
        {"query_pre_attn_scalar": None},
        {"final_logit_softcapping": None},
        {"sliding_window": 7},
        {"rope_local_theta": None},
        {"layer_types": ("full_attention",) * 5},
    ],
)
def test_gemma3_switches_change_logits(tmp_path: Path, change: dict[str, Any]) -> None:
    """Each Gemma 3 switch matters at these sizes (guards the power of the tests above)."""
    folder = save_tiny(tiny_hf_model("gemma3"), tmp_path)
    ours = load_ours(folder)
    other = build_model(
        dataclasses.replace(ours.config, **change),
        load_safetensors_state_dict(folder, torch.float32),
        torch.device("cpu"),
    )
    ids = _ids(30, seed=5)
    assert not torch.allclose(prefill_logits(ours, ids), prefill_logits(other, ids), atol=1e-3)


def test_sharded_folder_loads_same_weights(tmp_path: Path) -> None:
    hf = tiny_hf_model("qwen2", use_sliding_window=False)
    save_tiny(hf, tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    ids = _ids(12, seed=4)
    torch.testing.assert_close(
        prefill_logits(load_ours(tmp_path), ids), hf_logits(hf, ids), atol=ATOL, rtol=0
    )
