"""Would narrower centroids rank as well? Centroid storage precision on the real model's keys.

    python -m benchmarks.centroid_precision [--tokens 4096] [--steps 8]

The centroid scan reads every centroid every step (half of the byte model at 128K); fp8
centroids would halve it. This measures the accuracy side on CPU: the default model's post-RoPE
q/k/v of a natural prompt (`real_qkv`), every layer prefilled with RetroInferConfig() defaults,
then `--steps` decode steps per layer with the centroids stored at each precision (fp32 is the
baseline, in the same run; bf16 is the model dtype of the GPU path, int8 with a per-centroid
scale the default storage (centroid_format), fp8 e4m3 the other narrow option, emulated by
rounding: the math stays fp32). Reported per precision:
- retrieved / estimated overlap: the fraction of the baseline's retrieved (estimated) clusters
  that the precision also retrieves (estimates), over all (layer, KV head, step);
- output cosine with exact full attention (float64), and the output's relative difference from
  the baseline's.
Writes JSON (default results/centroid_precision_cpu.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from inference_worker.retroinfer import (
    InProcessClusterSource,
    RetroInferConfig,
    RetroInferLayer,
    StepOptions,
)
from inference_worker.retroinfer.index import dequantize_centroids, store_centroids

from .attention import RESULTS, _device_name
from .real_qkv import capture_qkv

log = logging.getLogger(__name__)
PRECISIONS = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp8_e4m3": torch.float8_e4m3fn,
    "int8_scaled": torch.int8,  # per-centroid scale: amax / 127 (centroid_format "int8")
}


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    qkv = capture_qkv(args.tokens)
    totals = {name: _Totals() for name in PRECISIONS}
    for li, (q, k, v) in enumerate(qkv):
        base = _run_layer(li, q, k, v, torch.float32, args.steps)
        for name, dtype in PRECISIONS.items():
            run = base if dtype == torch.float32 else _run_layer(li, q, k, v, dtype, args.steps)
            totals[name].add(base, run, q, k, v, args.tokens - args.steps)
        log.info("layer %d: %s", li, {n: t.summary() for n, t in totals.items()})
    result = {
        "device": _device_name(torch.device("cpu")),
        "model": "SmolLM2-135M-Instruct (default), fp32 compute, natural prompt",
        "prompt_tokens": args.tokens - args.steps,
        "steps_per_layer": args.steps,
        "layers": len(qkv),
        "config": "RetroInferConfig() defaults",
        "rows": {name: t.summary() for name, t in totals.items()},
    }
    out = args.out or RESULTS / "centroid_precision_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    _print(result)
    log.info("wrote %s", out)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tokens", type=int, default=4096, help="prompt + decoded tokens")
    p.add_argument("--steps", type=int, default=8, help="decode steps per layer")
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args()


def _run_layer(
    li: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dtype: torch.dtype, steps: int
) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """Decode the last `steps` tokens of one layer with centroids rounded to `dtype`:
    [(output [Hq, D], selection)] per step."""
    hq, hkv, d = q.shape[0], k.shape[0], q.shape[-1]
    prompt = k.shape[1] - steps
    ids = ["s0"]
    source = InProcessClusterSource()
    layer = RetroInferLayer(  # fp32 centroids, rounded below to emulate each storage
        RetroInferConfig(centroid_format="model"), li, hq, hkv, d, source, ids,
        on_segment=source.put, options=StepOptions(record_selection=True),
    )  # fmt: skip
    layer.prefill(k[None, :, :prompt], v[None, :, :prompt])
    layer.meta.centroids = _rounded(layer.meta.centroids, dtype)  # stored narrow, math in fp32
    out = []
    for t in range(prompt, prompt + steps):
        o, stats = layer.decode(q[None, :, t], k[None, :, t], v[None, :, t])
        assert stats.selection is not None
        out.append((o[0], stats.selection))
    return out


def _rounded(centroids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """fp32 centroids as stored in `dtype` (int8: one scale per centroid), back in fp32."""
    return dequantize_centroids(*store_centroids(centroids, dtype))


class _Totals:
    """Running sums of one precision's agreement with the fp32 baseline."""

    def __init__(self) -> None:
        self.sums = {"retrieved": 0.0, "estimated": 0.0, "cosine": 0.0, "rel_diff": 0.0}
        self.worst_rel_diff = 0.0
        self.min_cosine = 1.0
        self.n = 0

    def add(self, base, run, q, k, v, prompt: int) -> None:  # type: ignore[no-untyped-def]
        for s, ((o_b, sel_b), (o, sel)) in enumerate(zip(base, run, strict=True)):
            t = prompt + s
            self.sums["retrieved"] += _overlap(sel_b["retrieved"][0], sel["retrieved"][0])
            est_b = torch.where(sel_b["estimated_mask"][0], sel_b["estimated"][0], -1)
            est = torch.where(sel["estimated_mask"][0], sel["estimated"][0], -1)
            self.sums["estimated"] += _overlap(est_b, est)
            cos = torch.nn.functional.cosine_similarity(o.double(), _full(q[:, t], k, v, t), dim=-1)
            rel = ((o - o_b).norm(dim=-1) / o_b.norm(dim=-1)).max().item()
            self.sums["cosine"] += cos.mean().item()
            self.sums["rel_diff"] += rel
            self.worst_rel_diff = max(self.worst_rel_diff, rel)
            self.min_cosine = min(self.min_cosine, cos.min().item())
            self.n += 1

    def summary(self) -> dict[str, float]:
        mean = {f"mean_{k}": round(v / max(self.n, 1), 5) for k, v in self.sums.items()}
        return {
            **mean,
            "worst_rel_diff": round(self.worst_rel_diff, 5),
            "min_cosine": round(self.min_cosine, 5),
        }


def _overlap(want: torch.Tensor, got: torch.Tensor) -> float:
    """Mean over KV heads of |want & got| / |want| (ids -1 ignored). want/got [Hkv, n]."""
    total = 0.0
    for h in range(want.shape[0]):
        w, g = want[h][want[h] >= 0], got[h][got[h] >= 0]
        total += torch.isin(w, g).float().mean().item() if w.numel() else 1.0
    return total / want.shape[0]


def _full(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t: int) -> torch.Tensor:
    """Exact attention of q [Hq, D] over tokens 0..t, float64 -> [Hq, D]."""
    hkv, d = k.shape[0], k.shape[-1]
    logits = q.double().view(hkv, -1, d) @ k[:, : t + 1].double().transpose(1, 2)
    probs = torch.softmax(logits / d**0.5, dim=-1)  # [Hkv, G, t+1]
    return (probs @ v[:, : t + 1].double()).view(-1, d)


def _print(result: dict[str, object]) -> None:
    print(
        f"\nCentroid storage precision, {result['model']}, {result['prompt_tokens']}-token "
        f"prompt, {result['layers']} layers x {result['steps_per_layer']} steps, "
        f"{result['device']} (fp32 = the baseline, same run)"
    )
    head = ("precision", "retrieved", "estimated", "cosine", "min cos", "rel diff", "worst")
    print(f"{head[0]:>10} {head[1]:>10} {head[2]:>10} {head[3]:>8} {head[4]:>8} {head[5]:>9} "
          f"{head[6]:>8}")  # fmt: skip
    for name, r in result["rows"].items():  # type: ignore[attr-defined]
        print(
            f"{name:>10} {r['mean_retrieved']:>10.4f} {r['mean_estimated']:>10.4f} "
            f"{r['mean_cosine']:>8.4f} {r['min_cosine']:>8.4f} {r['mean_rel_diff']:>9.2e} "
            f"{r['worst_rel_diff']:>8.2e}"
        )


if __name__ == "__main__":
    main()
