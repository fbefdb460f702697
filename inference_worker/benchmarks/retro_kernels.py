"""RetroInfer decode kernels: correctness vs the torch references and per-kernel timings.

    python -m inference_worker.benchmarks.retro_kernels [--out PATH]

Needs CUDA and Triton. Checks every kernel against its reference on fresh random inputs (fp32
and bf16, small and 128K x batch-16 sized), then times kernel vs reference at the 128K x 16
Llama-3.1-8B per-layer shape (R = 128 rows, C = 8192 clusters, G = 4, D = 128, bf16). Writes
JSON (default inference_worker/benchmarks/results/retro_kernels_cuda.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from inference_worker.retroinfer.kernels import (
    copy_runs,
    copy_runs_reference,
    decode_attention,
    decode_attention_reference,
    estimate_partials,
    estimate_partials_reference,
    rank_select,
    rank_select_reference,
)
from inference_worker.retroinfer.kernels.cases import (
    attention_case,
    compare_all,
    copy_case,
    estimate_case,
    rank_case,
)

log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
ROWS, GROUP, DIM, CLUSTERS = 128, 4, 128, 8192  # 128K tokens x batch 16, Llama-3.1-8B


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(RESULTS / "retro_kernels_cuda.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    checks = {
        f"{dt}_{'big' if big else 'small'}": compare_all("cuda", dtype, seed=7, big=big)
        for dt, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        for big in (False, True)
    }
    timings = _timings()
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shape": {"rows": ROWS, "group": GROUP, "head_dim": DIM, "clusters": CLUSTERS},
        "checks": checks,
        "timings_ms": timings,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nRetroInfer kernels on {result['device']} (R={ROWS}, C={CLUSTERS}, bf16)")
    print(f"{'kernel':<18} {'triton ms':>10} {'torch ms':>10} {'speedup':>8}")
    for name, t in timings.items():
        print(
            f"{name:<18} {t['triton']:>10.4f} {t['torch']:>10.4f} {t['torch'] / t['triton']:>8.1f}"
        )
    for name, c in checks.items():
        print(name, c)
    log.info("wrote %s", args.out)


def _timings() -> dict[str, dict[str, float]]:
    bf16 = torch.bfloat16
    rank = rank_case(ROWS, GROUP, CLUSTERS, DIM, bf16, "cuda", 1)
    est = estimate_case(ROWS, GROUP, CLUSTERS, DIM, "cuda", 2)
    att = attention_case(ROWS, GROUP, DIM, 9472, CLUSTERS, bf16, "cuda", 3)
    att["view"].miss_len.fill_(2300)  # ~n_ret clusters of ~16 tokens missed (random queries)
    att["view"].hit_pages.fill_(16)
    att["view"].pos.fill_(200)
    cp = copy_case(ROWS * 147, DIM, bf16, "cuda", 4)
    dst = [torch.empty(cp["dst_shape"], dtype=bf16, device="cuda") for _ in range(2)]
    cargs = (cp["src_k"], cp["src_v"], dst[0], dst[1], cp["src_off"], cp["src_off"], cp["dst_off"])
    cases: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "rank_select": (
            lambda: rank_select(**rank, use_triton=True),
            lambda: rank_select_reference(**rank),
        ),
        "estimate": (
            lambda: estimate_partials(**est, use_triton=True),
            lambda: estimate_partials_reference(**est),
        ),
        "decode_attention": (
            lambda: decode_attention(**att, use_triton=True),
            lambda: decode_attention_reference(**att),
        ),
        "copy_runs": (
            lambda: copy_runs(*cargs, cp["rows"], DIM, use_triton=True),
            lambda: copy_runs_reference(*cargs, cp["rows"], DIM),
        ),
    }
    return {k: {"triton": _ms(a), "torch": _ms(b)} for k, (a, b) in cases.items()}


def _ms(fn: Callable[[], object], reps: int = 20) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return round(start.elapsed_time(end) / reps, 4)


if __name__ == "__main__":
    main()
