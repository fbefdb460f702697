"""Where the time of one RetroInfer decode step goes, and what launch shapes and storage
formats would change it.

    python -m benchmarks.step_profile [--context 131072] [--batch 16]

One layer at the Llama-3.1-8B attention geometry (bf16, CUDA graph replay), torch SDPA timed in
the same run. For each query stream: the step time (decode() calls, timed as the attention
benchmark times them), the GPU kernels of a step by name (torch profiler over graph replays),
then the same layer re-captured under variants, each timed on fresh queries:
- launch shapes of the decode, copy and selection kernels (same results up to rounding);
- storage formats: value sums in fp32 (the default keeps them in the model dtype), centroids in
  fp8 (e4m3) or int8 with per-centroid scales (timing experiments here: the ranking's accuracy
  is measured by `centroid_precision`); --centroids picks the baseline's format.
Every timed row also gets its GPU-busy µs per step (the union of its kernels' intervals in a
short profiler trace): the step's GPU cost where a slow host bounds the wall-clock time.
The baseline is timed again at the end (the steady zone grows by one token per step).
Writes JSON (default results/step_profile_<device>.json) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from inference_worker.retroinfer import InProcessClusterSource, RetroInferConfig, RetroInferLayer
from inference_worker.retroinfer.config import CENTROID_FORMATS

from .attention import (
    HEAD_DIM,
    KV_HEADS,
    Q_HEADS,
    RESULTS,
    _device_name,
    _release,
    _sync,
    _time_sdpa,
    _timed,
)
from .query_stream import STREAMS, QueryStream

log = logging.getLogger(__name__)
# the modules themselves (the kernels package re-exports functions under the same names)
attn_mod = importlib.import_module("inference_worker.retroinfer.kernels.decode_attention")
gather_mod = importlib.import_module("inference_worker.retroinfer.kernels.gather")
rank_mod = importlib.import_module("inference_worker.retroinfer.kernels.rank")
book_mod = importlib.import_module("inference_worker.retroinfer.kernels.bookkeeping")
fast_step_mod = importlib.import_module("inference_worker.retroinfer.fast_step")
est_mod = importlib.import_module("inference_worker.retroinfer.kernels.estimate")
step_io_mod = importlib.import_module("inference_worker.retroinfer.kernels.step_io")
Apply = Callable[[RetroInferLayer], Callable[[], None]]  # changes the layer, returns the undo
Variant = tuple[str, Apply]


def main() -> None:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.micro_batches is not None:
        setattr(fast_step_mod, "MICRO_BATCHES", args.micro_batches)  # noqa: B010
    result: dict[str, object] = {
        "device": _device_name(device),
        "torch": torch.__version__,
        "micro_batches": getattr(fast_step_mod, "MICRO_BATCHES"),  # noqa: B009
        "centroid_format": args.centroids,
        "context": args.context,
        "batch": args.batch,
        "steps": args.steps,
        "sdpa_ms": _time_sdpa(args.context, args.batch, args.steps, device, dtype),
        "streams": {},
    }
    _release(device)
    out = Path(args.out) if args.out else RESULTS / f"step_profile_{device.type}.json"
    for kind in args.streams:
        rho = args.rho if kind == "correlated" else 0.0
        stream = QueryStream(kind, (args.batch, Q_HEADS, HEAD_DIM), device, dtype, rho)
        result["streams"][kind] = _profile_stream(args, stream, device, dtype)  # type: ignore[index]
        out.write_text(json.dumps(result, indent=2))
        _release(device)
    _print(result)
    log.info("wrote %s", out)


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--context", type=int, default=131072)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20, help="timed decode steps per variant")
    p.add_argument("--streams", nargs="*", choices=STREAMS, default=list(STREAMS))
    p.add_argument(
        "--rho", type=float, default=0.944, help="correlated stream (0.944: hit ~0.79 at 128K x 16)"
    )
    p.add_argument(
        "--micro-batches", type=int, default=None,
        help="fast_step.MICRO_BATCHES of the baseline (default: the module's)",
    )  # fmt: skip
    p.add_argument(
        "--centroids", choices=sorted(CENTROID_FORMATS),
        default=RetroInferConfig().centroid_format,
        help="RetroInferConfig.centroid_format of the baseline (default: the config's)",
    )  # fmt: skip
    p.add_argument("--out", default=None)
    p.add_argument("--trace", default=None, help="folder for a Chrome trace per query stream")
    p.add_argument(
        "--variants", nargs="*", default=None, help="only variants whose names contain one of these"
    )
    p.add_argument("--device", default="cuda", help="cpu: a smoke test of this program only")
    return p.parse_args()


class _Runner:
    """A prefilled layer fed by a query stream (random new K/V every step). The stream runs on
    across phases: every step takes the stream's next query, whatever its caller's index."""

    def __init__(
        self, length: int, batch: int, stream: QueryStream, dtype: torch.dtype,
        centroids: str | None = None,
    ) -> None:  # fmt: skip
        dev = stream.device
        ids = [f"seq{b}" for b in range(batch)]
        source = InProcessClusterSource()
        self.layer = RetroInferLayer(
            RetroInferConfig(centroid_format=centroids or RetroInferConfig().centroid_format), 0,
            Q_HEADS, KV_HEADS, HEAD_DIM, source,
            ids, dtype=dtype,
            device=dev, on_segment=lambda s: source.put(ids, s),
        )  # fmt: skip
        k = torch.randn(batch, KV_HEADS, length, HEAD_DIM, device=dev, dtype=dtype)
        self.layer.prefill(k, torch.randn_like(k))
        del k
        self.stream = stream
        self.kv = torch.randn(8, 2, batch, KV_HEADS, HEAD_DIM, device=dev, dtype=dtype)
        self.queries = stream.take(64)
        self.counts: list[dict[str, torch.Tensor]] = []
        self.taken = 0  # steps run so far (the stream's position)

    def step(self, _: int = 0) -> None:
        """One decode step on the stream's next query (a fresh block every 64 steps)."""
        t, n = self.taken, self.queries.shape[0]
        if t and t % n == 0:
            self.queries = self.stream.take(n)
        self.taken += 1
        new = self.kv[t % self.kv.shape[0]]
        self.counts.append(self.layer.decode(self.queries[t % n], new[0], new[1])[1].counts)

    def timed(self, steps: int) -> dict[str, float]:
        """ms per decode() and the hit ratio of those steps (after 2 warm-up steps)."""
        first = len(self.counts) + 2
        ms = _timed(self.step, steps, self.stream.device)
        hits = sum(int(c["hits"]) for c in self.counts[first:])
        misses = sum(int(c["misses"]) for c in self.counts[first:])
        return {"ms": ms, "hit_ratio": round(hits / max(hits + misses, 1), 3)}

    def host_us(self, steps: int) -> float:
        """Host µs per decode() call alone: the calls are issued while the GPU spins on a long
        sleep kernel, so they never wait for it (the graphed step has no host sync)."""
        dev = self.stream.device
        if dev.type != "cuda":
            return 0.0
        self.step()
        _sync(dev)
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU cycles
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        host = time.perf_counter() - t0
        _sync(dev)
        return round(host / steps * 1e6, 1)

    def kernels(self, steps: int = 5, trace: Path | None = None) -> dict[str, float]:
        """GPU µs per step by kernel name (graph replays included), largest first. trace: also
        write the profiler's Chrome trace there (each kernel's stream, start and duration)."""
        for i in range(3):
            self.step(i)
        _sync(self.stream.device)
        acts = [torch.profiler.ProfilerActivity.CPU]
        if self.stream.device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=acts) as prof:
            for i in range(steps):
                self.step(i)
            _sync(self.stream.device)
        if trace is not None:
            prof.export_chrome_trace(str(trace))
        per: dict[str, float] = {}
        for ev in prof.key_averages():
            dev_us = getattr(ev, "self_device_time_total", 0.0)
            if dev_us > 0 and ev.device_type == torch.autograd.DeviceType.CUDA:
                per[ev.key[:60]] = per.get(ev.key[:60], 0.0) + dev_us / steps
        ordered = dict(sorted(per.items(), key=lambda kv: -kv[1]))
        return {k: round(v, 1) for k, v in ordered.items()}


def gpu_busy_us(trace: Path, steps: int) -> float:
    """GPU-busy µs per step in a Chrome trace of `steps` steps: the union of every kernel's and
    copy's interval (overlapping streams count once), host gaps excluded. A step's GPU cost
    where the host, not the GPU, bounds the wall-clock time."""
    events = json.loads(trace.read_text())["traceEvents"]
    spans = sorted(
        (e["ts"], e["ts"] + e["dur"])
        for e in events
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
    )
    busy, end = 0.0, float("-inf")
    for start, stop in spans:
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return round(busy / steps, 1)


def _with_busy(run: _Runner, timed: dict[str, float], steps: int = 6) -> dict[str, float]:
    """`timed` plus the GPU-busy µs per step of `steps` more steps (CUDA only)."""
    if run.stream.device.type != "cuda":
        return timed
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        run.kernels(steps, trace=trace)
        return timed | {"gpu_busy_us": gpu_busy_us(trace, steps)}


def _profile_stream(
    args: argparse.Namespace, stream: QueryStream, device: torch.device, dtype: torch.dtype
) -> dict[str, object]:
    run = _Runner(args.context, args.batch, stream, dtype, args.centroids)
    run.timed(args.steps)  # warm-up: capture, cache settles
    base = _with_busy(run, run.timed(args.steps))
    trace = Path(args.trace) / f"trace_{stream.kind}.json" if args.trace else None
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
    host = run.host_us(args.steps)
    log.info("%s host µs per decode(): %s", stream.kind, host)
    kernels = run.kernels(trace=trace)
    per_step = len(fast_step_mod.micro_batches(args.batch * KV_HEADS))
    timeline = step_timeline(trace, per_step=per_step) if trace is not None else []
    parts = _guarded(_decode_parts, run, args.steps)
    log.info("%s decode kernel parts (µs): %s", stream.kind, parts)
    select_parts = _guarded(_select_parts, run, args.steps)
    log.info("%s ranking kernel parts (µs): %s", stream.kind, select_parts)
    rows: dict[str, dict[str, float]] = {"baseline": base}
    for name, apply in _variants():
        if args.variants is not None and not any(v in name for v in args.variants):
            continue
        undo = apply(run.layer)
        run.layer._graph = None
        try:
            rows[name] = _with_busy(run, run.timed(args.steps))
        except Exception as err:  # a variant the kernels cannot compile: report, go on
            log.warning("variant %s failed: %s", name, err)
            rows[name] = {"error": str(err)[:300]}  # type: ignore[dict-item]
        undo()
        run.layer._graph = None
        log.info("%s %s: %s", stream.kind, name, rows[name])
    rows["baseline (again, end)"] = _with_busy(run, run.timed(args.steps))
    return {
        "rho": stream.rho,
        "clusters": run.layer.num_clusters,
        "host_us_per_step": host,
        "kernels_us_per_step": kernels,
        "kernel_total_us": round(sum(kernels.values()), 1),
        "timeline_us": timeline,
        "decode_parts_us": parts,
        "rank_parts_us": select_parts,
        "variants": rows,
    }


def step_timeline(
    trace: Path, first: str = "logits_kernel", per_step: int = 1
) -> list[list[object]]:
    """The GPU work of the last complete step in a Chrome trace: [stream, start µs (from the
    step's first `first` kernel), duration µs, name] per kernel or copy, in start order, and
    last the next step's start ("next step", duration 0). per_step: `first` kernels a step
    launches (one per micro-batch)."""
    events = json.loads(trace.read_text())["traceEvents"]
    gpu = [e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    gpu.sort(key=lambda e: e["ts"])
    starts = [i for i, e in enumerate(gpu) if e["name"] == first]
    if len(starts) < per_step + 1:
        return []
    step = gpu[starts[-1 - per_step] : starts[-1]]
    t0 = step[0]["ts"]
    rows = [
        [e.get("args", {}).get("stream"), round(e["ts"] - t0, 1), round(e["dur"], 1),
         e["name"][:60]]
        for e in step
    ]  # fmt: skip
    nxt = gpu[starts[-1]]  # the next step's first kernel: the gap before it is launch latency
    return [*rows, [nxt.get("args", {}).get("stream"), round(nxt["ts"] - t0, 1), 0.0, "next step"]]


def _guarded(
    fn: Callable[[_Runner, int], dict[str, float]], run: _Runner, steps: int
) -> dict[str, object]:
    """fn(run, steps), or its error: a failed measurement must not lose the rest of the run."""
    try:
        return dict(fn(run, steps))
    except Exception as err:
        log.warning("%s failed: %s", fn.__name__, err)
        return {"error": str(err)[:300]}


def _capture(run: _Runner, name: str, arg_names: tuple[str, ...]) -> dict[str, object]:
    """The arguments of fast_step's next call of `name` (one eager decode step)."""
    captured: list[dict[str, object]] = []
    real = getattr(fast_step_mod, name)

    def spy(*args: object, **kwargs: object) -> object:
        captured.append(dict(zip(arg_names, args, strict=False)) | kwargs)
        return real(*args, **kwargs)

    setattr(fast_step_mod, name, spy)
    run.layer._graph, use = None, run.layer.use_cuda_graph
    run.layer.use_cuda_graph = False
    try:
        run.step(0)
    finally:
        setattr(fast_step_mod, name, real)
        run.layer.use_cuda_graph = use
        run.layer._graph = None
    return captured[-1] if captured else {}


def _select_parts(run: _Runner, steps: int) -> dict[str, float]:
    """µs of the ranking kernels alone on one real step's inputs: logits + selection, the logits
    kernel alone, and the pair under selection variants (4-ary: 16 search steps of 4
    thresholds instead of 31 bisection steps; radix: 4 histogram passes; warps)."""
    if run.stream.device.type != "cuda":
        return {}
    names = ("q", "centroids", "sizes", "scale", "n_ret", "n_est")
    case = _capture(run, "rank_select", names) | {"use_triton": True}
    out = {"logits + select": _time_call(rank_mod.rank_select, case, steps)}
    out["logits alone"] = _time_call(_logits_only, case, steps)
    knobs = {
        "4-ary (16 steps)": ("SELECT_ARITY", 4),
        "radix (4 histogram passes)": ("SELECT_ARITY", 256),
        "select 4 warps": ("SELECT_WARPS", 4),
        "select 8 warps": ("SELECT_WARPS", 8),
        "select 16 warps": ("SELECT_WARPS", 16),
        "select 32 warps": ("SELECT_WARPS", 32),
    }
    for label, (knob, value) in knobs.items():
        undo = _set(rank_mod, knob, value)(run.layer)
        try:
            out[label] = _time_call(rank_mod.rank_select, case, steps)
        finally:
            undo()
    return out


def _logits_only(q, centroids, sizes, scale, **kw: object) -> None:  # type: ignore[no-untyped-def]
    """The centroid-scan kernel exactly as rank_select launches it."""
    from inference_worker.retroinfer.kernels._rank_triton import logits_kernel

    r, g, d = q.shape
    c = centroids.shape[1]
    nb = -(-c // rank_mod.LOGITS_BLOCK_C)
    q = q.to(rank_mod.scan_dtype(q, centroids)).contiguous()
    cs = kw.get("centroid_scale")
    z = torch.empty(r, g, c, dtype=torch.float32, device=q.device)
    pm = torch.empty(r, g, nb, dtype=torch.float32, device=q.device)
    logits_kernel[(r, nb)](
        q, centroids.contiguous(), sizes.contiguous(), sizes if cs is None else cs, z, pm,
        torch.empty_like(pm), c, nb, scale, G=g, GP=16, D=d, BLOCK_C=rank_mod.LOGITS_BLOCK_C,
        SCALED=cs is not None, num_warps=rank_mod.LOGITS_WARPS,
    )  # fmt: skip


def _decode_parts(run: _Runner, steps: int) -> dict[str, float]:
    """GPU µs of the attention kernels alone on one real step's inputs (graph replays): the
    exact-zone decode kernel + combine (the estimation partials already computed), the same with
    the exact zones emptied, the side pass over the steady zone and the cache hits (direct
    admission only), the estimation kernel, and each under launch-shape variants."""
    if run.stream.device.type != "cuda":
        return {}
    names = ("q", "view", "z", "estimated", "sizes", "value_sums", "scale")
    case = _capture(run, "decode_attention", names)
    early = case.get("early", ())
    assert isinstance(early, list)  # done: no cross-capture event wait
    case["early"] = [dataclasses.replace(p, ready=None) for p in early]
    est_names = ("z", "estimated", "sizes", "value_sums")
    est = {k: v for k, v in _capture(run, "estimate_async", est_names).items() if k in est_names}
    view = case["view"]
    assert isinstance(view, attn_mod.ExecView)
    zero = torch.zeros_like(view.miss_len)
    exact_off = dataclasses.replace(
        view, pos=torch.full_like(view.pos, -1), miss_len=zero, hit_pages=zero
    )
    fn, est_fn = attn_mod.decode_attention, est_mod.estimate_partials
    out = {
        "exact decode + combine": _time_call(fn, case, steps),
        "exact zones emptied": _time_call(fn, case | {"view": exact_off}, steps),
    }
    for name, tuning in attn_mod.TUNING_VARIANTS.items():
        out[f"exact decode, {name}"] = _time_call(fn, case | {"tuning": tuning}, steps)
    hits = _capture(run, "exact_partials", (*names, "tuning"))  # the steady zone + hits pass
    if hits:
        hv = hits["view"]
        assert isinstance(hv, attn_mod.ExecView)
        out["hits pass: steady tokens"] = int(hv.pos.item()) + 1
        out["hits pass: hit pages per row"] = round(float(hv.hit_pages.float().mean()), 1)
        out["hits pass"] = _time_call(attn_mod.exact_partials, hits, steps)
        no_steady = dataclasses.replace(hv, pos=torch.full_like(hv.pos, -1))
        no_hits = dataclasses.replace(hv, hit_pages=torch.zeros_like(hv.hit_pages))
        empty = dataclasses.replace(no_hits, pos=no_steady.pos)
        for label, v in (("steady emptied", no_steady), ("hits emptied", no_hits),
                         ("both emptied", empty)):  # fmt: skip
            out[f"hits pass, {label}"] = _time_call(
                attn_mod.exact_partials, hits | {"view": v}, steps
            )
        for name, tuning in attn_mod.TUNING_VARIANTS.items():
            out[f"hits pass, {name}"] = _time_call(
                attn_mod.exact_partials, hits | {"tuning": tuning}, steps
            )
    for block, prefetch in itertools.product((16, 32, 64), (False, True)):
        label = f"estimation kernel, block {block}" + (", prefetch" if prefetch else "")
        shape = {"use_triton": True, "block": block, "prefetch": prefetch}
        out[label] = _time_call(est_fn, est | shape, steps)
    return out


def _time_call(fn: Callable[..., object], case: dict[str, object], steps: int) -> float:
    """GPU µs per call of fn(**case), captured once in a CUDA graph (no launch overhead) and
    replayed `steps` times between events, after 3 eager warm-up calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(**case)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(**case)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    end.synchronize()
    return round(start.elapsed_time(end) * 1000 / steps, 1)


def _set(module: object, name: str, value: object) -> Apply:
    def apply(layer: RetroInferLayer) -> Callable[[], None]:
        old = getattr(module, name)
        setattr(module, name, value)
        return lambda: setattr(module, name, old)

    return apply


def _micro(k: int) -> Apply:
    return _set(fast_step_mod, "MICRO_BATCHES", k)


def _both(first: Apply, second: Apply) -> Apply:
    """Two settings at once."""

    def apply(layer: RetroInferLayer) -> Callable[[], None]:
        undo_first, undo_second = first(layer), second(layer)
        return lambda: (undo_second(), undo_first())[-1]

    return apply


def _attr(name: str, value: object) -> Apply:
    """A RetroInferLayer attribute set for the variant."""

    def apply(layer: RetroInferLayer) -> Callable[[], None]:
        old = getattr(layer, name)
        setattr(layer, name, value)
        return lambda: setattr(layer, name, old)

    return apply


def _meta(field: str, dtype: torch.dtype) -> Apply:
    def apply(layer: RetroInferLayer) -> Callable[[], None]:
        old = getattr(layer.meta, field)
        setattr(layer.meta, field, old.to(dtype))
        return lambda: setattr(layer.meta, field, old)

    return apply


def _centroids_as(dtype: torch.dtype | None) -> Apply:
    """The layer's centroids re-stored in `dtype` (int8: with per-centroid scales; None: the
    model dtype, the paper's)."""
    from inference_worker.retroinfer.index import dequantize_centroids, store_centroids

    def apply(layer: RetroInferLayer) -> Callable[[], None]:
        meta = layer.meta
        old = meta.centroids, meta.centroid_scale
        full = dequantize_centroids(meta.centroids, meta.centroid_scale)
        meta.centroids, meta.centroid_scale = store_centroids(full, dtype or meta.scan_dtype)

        def undo() -> None:
            meta.centroids, meta.centroid_scale = old

        return undo

    return apply


def _shape(**kwargs: int) -> object:
    return attn_mod.DecodeTuning(**kwargs)


def _variants() -> list[Variant]:
    unstaggered = _set(fast_step_mod, "MICRO_STAGGER", False)
    fp8 = _centroids_as(torch.float8_e4m3fn)
    equal = _set(fast_step_mod, "MICRO_PRIORITY", False)
    on_chain = _set(fast_step_mod, "ADMIT_BESIDE", False)
    one_kernel = _set(fast_step_mod, "PLAN_ADMIT", True)
    est_hits = _set(fast_step_mod, "EST_WITH_HITS", True)
    hits_at_plan = _set(fast_step_mod, "SIDE_LAUNCH", "hits at plan")
    tunings = {f"decode {k}": v for k, v in attn_mod.TUNING_VARIANTS.items()}
    out: list[Variant] = [(k, _set(attn_mod, "TUNING", v)) for k, v in tunings.items()]
    out += [
        ("copy 4 runs", _set(gather_mod, "COPY_RUNS", 4)),
        ("copy 16 runs", _set(gather_mod, "COPY_RUNS", 16)),
        ("copy 1 warp", _set(gather_mod, "COPY_WARPS", 1)),
        ("copy 4 warps", _set(gather_mod, "COPY_WARPS", 4)),
        ("select 16 warps", _set(rank_mod, "SELECT_WARPS", 16)),
        ("step io by torch ops", _set(step_io_mod, "USE_KERNELS", False)),
        ("select 4-ary", _set(rank_mod, "SELECT_ARITY", 4)),
        ("select arity 8", _set(rank_mod, "SELECT_ARITY", 8)),
        ("select radix", _set(rank_mod, "SELECT_ARITY", 256)),
        ("logits block 64", _set(rank_mod, "LOGITS_BLOCK_C", 64)),
        ("logits block 256", _set(rank_mod, "LOGITS_BLOCK_C", 256)),
        ("logits 8 warps", _set(rank_mod, "LOGITS_WARPS", 8)),
        ("bookkeeping 8 warps", _set(book_mod, "BOOK_WARPS", 8)),
        ("bookkeeping 2 warps", _set(book_mod, "BOOK_WARPS", 2)),
        ("select 32 warps", _set(rank_mod, "SELECT_WARPS", 32)),
        ("no side streams", _attr("overlap_streams", False)),
        ("estimation in the hits pass", est_hits),
        ("admission copy kernel + fetch", _attr("fused_copy", False)),
        ("side launch at fork", _set(fast_step_mod, "SIDE_LAUNCH", "at fork")),
        ("hits pass chunk 1024", _set(fast_step_mod, "HITS_TUNING", attn_mod.DecodeTuning())),
        ("hits pass chunk 2048", _set(fast_step_mod, "HITS_TUNING", _shape(chunk=2048))),
        ("hits pass 1 page split", _set(fast_step_mod, "HITS_TUNING", _shape(page_splits=1))),
        ("hits pass 3 page splits", _set(fast_step_mod, "HITS_TUNING", _shape(page_splits=3))),
        ("hits pass 4 page splits", _set(fast_step_mod, "HITS_TUNING", _shape(page_splits=4))),
        ("hits launched at plan", hits_at_plan),
        (
            "side: estimation after admission",
            _set(fast_step_mod, "SIDE_LAUNCH", "estimation after admission"),
        ),
        ("side: both after admission", _set(fast_step_mod, "SIDE_LAUNCH", "both after admission")),
        ("value sums fp32", _meta("value_sums", torch.float32)),
        ("centroids fp8 e4m3", fp8),
        ("centroids int8", _centroids_as(torch.int8)),
        ("centroids in the model dtype", _centroids_as(None)),
        ("plan+admission one kernel", one_kernel),
        ("estimation in the hits pass, hits at plan", _both(est_hits, hits_at_plan)),
        ("estimation in the hits pass, plan+admission one kernel", _both(est_hits, one_kernel)),
        ("estimation chunk 256", _set(est_mod, "EST_CHUNK", 256)),
        ("estimation chunk 1024", _set(est_mod, "EST_CHUNK", 1024)),
        ("estimation chunk 2048", _set(est_mod, "EST_CHUNK", 2048)),
        ("admission on the chain", on_chain),
        ("admission on the chain, fp8 centroids", _both(on_chain, fp8)),
        ("1 micro-batch", _micro(1)),
        ("2 micro-batches", _micro(2)),
        ("3 micro-batches", _micro(3)),
        ("4 micro-batches", _micro(4)),
        ("2 micro-batches, not staggered", _both(_micro(2), unstaggered)),
        ("2 micro-batches, fp8 centroids", _both(_micro(2), fp8)),
        ("2 micro-batches, equal priority", _both(_micro(2), equal)),
    ]
    return out


def _print(result: dict[str, object]) -> None:
    print(
        f"\nRetroInfer decode step, {result['device']}, context {result['context']} x batch "
        f"{result['batch']}; SDPA {result['sdpa_ms']} ms (same run)"
    )
    for kind, data in result["streams"].items():  # type: ignore[attr-defined]
        print(f"\n[{kind}] kernel µs per step (total {data['kernel_total_us']}):")
        for name, us in list(data["kernels_us_per_step"].items())[:14]:
            print(f"  {us:>8.1f}  {name}")
        print(f"{'variant':>24} {'ms':>8} {'x SDPA':>7} {'hit':>6} {'GPU-busy us':>11}")
        for name, row in data["variants"].items():
            if "ms" in row:
                speed = float(result["sdpa_ms"]) / row["ms"]  # type: ignore[arg-type]
                busy = row.get("gpu_busy_us", "-")
                print(f"{name:>24} {row['ms']:>8.4f} {speed:>7.2f} {row['hit_ratio']:>6} "
                      f"{busy:>11}")  # fmt: skip
            else:
                print(f"{name:>24}  error: {row['error'][:80]}")


if __name__ == "__main__":
    main()
