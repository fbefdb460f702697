"""Compile every RetroInfer Triton kernel for the H100 (sm_90) on a machine without a GPU.

    python -m tests.inference_worker.retroinfer.kernels.sm90_compile

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python, not Triton's compiler: type
rules of loop-carried values, layout passes and ptxas only fail on a real compile. This program
swaps Triton's active driver for one that reports an sm_90 target and turns every launch into a
compile (JITFunction.run with warmup=True), then calls the public wrappers with GPU-like inputs
on CPU tensors: bf16 / fp32 / fp8 dtypes, the default launch shapes and every decode launch
shape the step profiler times. Outputs are never computed (the buffers stay uninitialised);
correctness is what the interpreted and CUDA tests check. Needs triton with its NVIDIA backend
(ptxas ships in the wheel); no CUDA driver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

log = logging.getLogger(__name__)
Compiled = list[tuple[str, int, int, str]]  # kernel name, warps, shared-memory bytes, hash


@contextmanager
def compile_only(arch: int = 90) -> Iterator[Compiled]:
    """Inside: Triton launches compile for cuda `arch` and return without running; kernel
    availability checks pass on CPU. Yields the list of compiled kernels."""
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    from inference_worker.retroinfer.kernels import availability

    class _Driver:
        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", arch, 32)

    compiled: Compiled = []
    run = JITFunction.run

    def compile_run(self, *args, grid, warmup, **kwargs):  # type: ignore[no-untyped-def]
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append(
            (self.fn.__name__, kernel.metadata.num_warps, kernel.metadata.shared, kernel.hash)
        )
        return kernel

    available, active = availability.kernels_available, driver._active
    driver.set_active(_Driver())  # type: ignore[arg-type]
    JITFunction.run = compile_run  # type: ignore[method-assign]
    availability.kernels_available = lambda device: True  # type: ignore[assignment]
    try:
        yield compiled
    finally:
        JITFunction.run = run  # type: ignore[method-assign]
        availability.kernels_available = available  # type: ignore[assignment]
        driver._active = active  # as it was (reset_active would probe for a GPU)


def _rank(dtype: torch.dtype) -> None:
    from inference_worker.retroinfer.index import quantize_centroids
    from inference_worker.retroinfer.kernels import rank
    from tests.inference_worker.retroinfer.kernels.cases import rank_case

    for c, cent_dtype in ((8192, dtype), (1500, dtype), (8192, torch.float8_e4m3fn)):
        case = rank_case(4, 4, c, 128, dtype, "cpu", seed=0)
        case["centroids"] = case["centroids"].to(cent_dtype)
        rank.rank_select(**case, use_triton=True, sort=False)
    case = rank_case(4, 4, 8192, 128, dtype, "cpu", seed=0)  # int8 centroids with scales
    case["centroids"], case["centroid_scale"] = quantize_centroids(case["centroids"])
    rank.rank_select(**case, use_triton=True, sort=False)


def _decode(dtype: torch.dtype) -> None:
    from inference_worker.retroinfer.fast_step import HITS_TUNING
    from inference_worker.retroinfer.kernels.decode_attention import (
        DecodeTuning,
        decode_attention,
    )
    from inference_worker.retroinfer.kernels.estimate import estimate_partials
    from tests.inference_worker.retroinfer.kernels.cases import attention_case, with_copy_in

    case = attention_case(4, 4, 128, 512, 600, dtype, "cpu", seed=0)
    default = [DecodeTuning()]
    # value sums in the K/V dtype (the GPU default) under the step's launch shapes
    for value_dtype, tunings in ((dtype, [*default, HITS_TUNING]), (torch.float32, default)):
        case["value_sums"] = case["value_sums"].to(value_dtype)
        for tuning in tunings if dtype != torch.float32 else default:
            decode_attention(**case, use_triton=True, tuning=tuning)
            decode_attention(**with_copy_in(case, seed=1), use_triton=True, tuning=tuning)
        est = {k: case[k] for k in ("z", "estimated", "sizes", "value_sums")}
        for prefetch in (False, True):
            estimate_partials(**est, use_triton=True, block=32, prefetch=prefetch)


def _copy(dtype: torch.dtype) -> None:
    from inference_worker.retroinfer.kernels import gather
    from tests.inference_worker.retroinfer.kernels.cases import copy_case

    case = copy_case(40, 128, dtype, "cpu", seed=0)
    dst_k = torch.empty(case.pop("dst_shape"), dtype=dtype)
    for block_rows in (8, 16):  # page-sized (admission) and cluster-sized (fetch) runs
        gather.copy_runs(
            case["src_k"], case["src_v"], dst_k, torch.empty_like(dst_k), case["src_off"],
            case["src_off"], case["dst_off"], case["rows"], 128, use_triton=True,
            block_rows=block_rows,
        )  # fmt: skip


def _bookkeeping(dtype: torch.dtype) -> None:
    from inference_worker.retroinfer.kernels.bookkeeping import admit_direct, admit_step, plan_step
    from inference_worker.retroinfer.wave_buffer import WaveBuffer
    from tests.inference_worker.retroinfer.kernels.book_cases import _random_table

    r, n, pt, d, clusters = 4, 10, 8, 128, 60
    sizes = torch.randint(1, 16, (r, clusters))
    ret = torch.stack([torch.randperm(clusters)[:n] for _ in range(r)])
    for score in (None, torch.rand(r, n)):
        buf = WaveBuffer(r, 32, pt, d, dtype, torch.device("cpu"))
        buf.grow(clusters)
        plan = plan_step(buf, ret, sizes, 400, 33, True, score)
        miss = torch.zeros(r, 16 * n, d, dtype=dtype)
        admit_step(buf, plan, miss, miss, torch.zeros(r, n + 1, dtype=torch.int64))
    table = _random_table("cpu", 0, r, 1, head_dim=d)
    buf = WaveBuffer(r, 32, pt, d, torch.float32, torch.device("cpu"))
    buf.grow(table.size.shape[2])
    plan = plan_step(buf, ret % table.size.shape[2], table.size.reshape(r, -1), 400, 33, True)
    admit_direct(buf, plan, table, plan.take, plan.fill, plan.count)
    plan = plan_step(buf, ret % table.size.shape[2], table.size.reshape(r, -1), 400, 33, True)
    admit_direct(buf, plan, table, plan.take, plan.fill, plan.count, copy=False)
    table.fetch(ret.view(r, 1, n) % table.size.shape[2], 64, use_triton=True)


def _assign(dtype: torch.dtype) -> None:
    from inference_worker.retroinfer.kernels.assign import assign_labels, sort_clusters
    from inference_worker.retroinfer.kernels.cluster_sums import cluster_sums

    r, n, c, d = 4, 1000, 64, 128
    x = torch.randn(2 * r, n, d).to(dtype)[::2]  # strided rows, as prefill passes keys
    shift = torch.randn(r, d)
    for segments in (1, 2):
        cent = torch.randn(r * segments, c, d).to(dtype)
        lengths = torch.full((r * segments,), n // segments)
        for lens, sh in ((None, None), (lengths, shift)):
            assign_labels(x, cent, lens, sh, use_triton=True, num_segments=segments)
        labels = torch.randint(0, c + 1, (r * segments, n // segments), dtype=torch.int32)
        order, offsets = sort_clusters(labels, c)
        prev = torch.randn(r * segments, c, d)
        for sh, norm, gather in ((None, None, False), (shift, None, True), (shift, prev, False)):
            cluster_sums(x, order, offsets, sh, norm, gather, True, segments)


def _step_io(dtype: torch.dtype) -> None:
    from inference_worker.retroinfer.kernels.step_io import load_step, unload_step, write_token

    for b, h, g, d, cap in ((16, 8, 4, 128, 200), (2, 3, 3, 64, 40)):
        k, q = torch.randn(b, h, d).to(dtype), torch.randn(b, h * g, d)
        steady = torch.zeros(b, h, cap, d, dtype=dtype)
        pos = torch.randint(cap, (b * h,))
        load_step(k, k, steady, steady, pos, q, q.to(dtype), use_triton=True)
        load_step(k, k, steady, steady, pos, use_triton=True)
        write_token(k, k, steady, steady, pos, use_triton=True)
        unload_step(q, torch.zeros(7, dtype=torch.int64), dtype, use_triton=True)


CHECKS: dict[str, Callable[[torch.dtype], None]] = {
    "rank": _rank,
    "decode": _decode,
    "copy": _copy,
    "bookkeeping": _bookkeeping,
    "assign": _assign,
    "step_io": _step_io,
}


def compile_all(dtypes: tuple[torch.dtype, ...] = (torch.bfloat16, torch.float32)) -> Compiled:
    """Compiles every kernel family for sm_90; raises the first compile error."""
    with compile_only() as compiled:
        for name, check in CHECKS.items():
            for dtype in dtypes:
                log.info("compiling %s (%s)", name, dtype)
                check(dtype)
    return compiled


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    compiled = compile_all()
    names = sorted({name for name, *_ in compiled})
    log.info("compiled %d kernel launches for sm_90 (%s)", len(compiled), ", ".join(names))
    print("ok")  # the subprocess protocol of tests/interpret.py


if __name__ == "__main__":
    main()
