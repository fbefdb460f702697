"""Fused wave-buffer bookkeeping vs its torch reference on fresh random steps, and a layer's
Triton step (direct admission, packed fetch) vs the torch reference step.

Two identical `WaveBuffer`s take the same random steps (ranked lists with hits, misses,
padding clusters, execution-buffer overflow, cache pressure with evictions and rejections);
one through the reference, one through the fused kernels. After every step the outputs and the
whole state must be identical. Run on CPU with `TRITON_INTERPRET=1 python -m
tests.inference_worker.retroinfer.kernels.book_cases` (the tests do), or call the checks on CUDA.
"""

from __future__ import annotations

import copy

import torch

from inference_worker.retroinfer import (
    InProcessClusterSource,
    RetroInferConfig,
    RetroInferLayer,
    StepOptions,
)
from inference_worker.retroinfer.kernels.availability import patch_interpreter_index
from inference_worker.retroinfer.kernels.bookkeeping import admit_step, plan_step
from inference_worker.retroinfer.wave_buffer import WaveBuffer

PLAN_FIELDS = ("ret_sizes", "overflow", "valid", "hit", "miss", "miss_ids", "take", "fill", "count")


def check_bookkeeping(
    rows: int,
    clusters: int,
    n: int,
    pages: int,
    steps: int,
    device: str,
    seed: int,
    page_tokens: int = 4,
    head_dim: int = 16,
    cap_tokens: int | None = None,
) -> dict[str, int]:
    """Runs `steps` random steps on both paths; raises on any difference. Returns total counts."""
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 3 * page_tokens, (rows, clusters), generator=gen)
    sizes[torch.rand(rows, clusters, generator=gen) < 0.1] = 0  # empty (padding) clusters
    sizes = sizes.to(device)
    bufs = [
        WaveBuffer(rows, pages, page_tokens, head_dim, torch.float32, torch.device(device))
        for _ in range(2)
    ]
    for b in bufs:
        b.grow(clusters)
    cap = cap_tokens if cap_tokens is not None else n * 3 * page_tokens
    width = min(cap // page_tokens + n, pages + 1)
    totals = torch.zeros(7, dtype=torch.int64)
    pool = torch.randperm(clusters, generator=gen)[: max(n, clusters // 3)]
    for step in range(steps):
        hot = pool[torch.randperm(pool.numel(), generator=gen)]
        ret = torch.stack([_ranked(hot, clusters, n, gen) for _ in range(rows)]).to(device)
        score = None
        if step % 2:  # unsorted retrieval list with scores (ties included): the plan ranks it
            score = torch.randint(0, 4, (rows, n), generator=gen).float().to(device)
        plans = [
            plan_step(b, ret, sizes, cap, width, fused, score)
            for b, fused in zip(bufs, (False, True), strict=True)
        ]
        _same(f"step {step} ranked", plans[0].ret, plans[1].ret)
        assert plans[1].fused, "the fused path did not run"
        for name in PLAN_FIELDS:
            _same(f"step {step} {name}", getattr(plans[0], name), getattr(plans[1], name))
        assert plans[0].overflow_ids is None and plans[1].overflow_ids is not None
        _same(f"step {step} hit pages", plans[0].count, plans[1].hit_pages())
        _same(f"step {step} overflowed", plans[0].overflowed(), plans[1].overflowed())
        miss_k, miss_v, miss_off = _misses(plans[0].miss_ids, sizes, head_dim, gen, device)
        counts = [admit_step(b, p, miss_k, miss_v, miss_off) for b, p in zip(bufs, plans)]  # noqa: B905
        _same(f"step {step} counts", counts[0], counts[1])
        _same_state(step, *bufs)
        totals += counts[0].cpu()
    names = ("hits", "misses", "admitted", "rejected", "evicted", "overflow", "tokens")
    return dict(zip(names, totals.tolist(), strict=True))


def _ranked(hot: torch.Tensor, clusters: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """n distinct ids, mostly from a hot pool (so later steps hit), a few from anywhere."""
    warm = hot[: n - n // 4]
    rest = torch.ones(clusters, dtype=torch.bool)
    rest[warm] = False
    others = torch.nonzero(rest).flatten()
    cold = others[torch.randperm(others.numel(), generator=gen)[: n - warm.numel()]]
    return torch.cat([warm, cold])[torch.randperm(n, generator=gen)]


def _misses(
    miss_ids: torch.Tensor, sizes: torch.Tensor, d: int, gen: torch.Generator, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed miss rows (random contents, padding rows random too) and their offsets."""
    r, n = miss_ids.shape
    tok = torch.where(miss_ids >= 0, sizes.gather(1, miss_ids.clamp(min=0)), 0).cpu()
    off = torch.zeros(r, n + 1, dtype=torch.int64)
    off[:, 1:] = tok.cumsum(1)
    m = int(off[:, -1].max()) + 5
    keys = torch.randn(r, m, d, generator=gen).to(device)
    values = torch.randn(r, m, d, generator=gen).to(device)
    return keys, values, off.to(device)


def _same_state(step: int, ref: WaveBuffer, got: WaveBuffer) -> None:
    p = ref.pages  # the scratch page (index p) absorbs masked writes: unspecified
    _same(f"step {step} owner", ref.owner[:, :p], got.owner[:, :p])
    _same(f"step {step} fill", ref.fill[:, :p], got.fill[:, :p])
    for name in ("stamp", "clock", "hits", "misses", "evictions"):
        _same(f"step {step} {name}", getattr(ref, name), getattr(got, name))
    rows = torch.arange(ref.page_tokens, device=ref.fill.device)
    valid = (ref.owner[:, :p] >= 0).unsqueeze(-1) & (rows < ref.fill[:, :p].unsqueeze(-1))
    for name in ("keys", "values"):
        a, b = getattr(ref, name)[:, :p][valid], getattr(got, name)[:, :p][valid]
        _same(f"step {step} {name}", a, b)


def _same(what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or not torch.equal(a.cpu(), b.cpu()):
        raise AssertionError(f"{what} differs:\nreference {a.cpu()}\nfused     {b.cpu()}")


def check_layer_paths(device: str, dtype: torch.dtype, seed: int, shape: tuple[int, ...]) -> None:
    """A layer's Triton step with direct admission (the source's cluster table) vs with the
    misses fetched packed (a source without a table) vs the torch reference step: same outputs
    (fp32 1e-4, bf16 2e-2) and identical statistics over a few steps (bf16: the two Triton
    paths with each other only: the reference ranks in bf16, near-ties differ), and the direct
    path's graph key stable across steps (a captured step stays valid).
    shape = (batch, q heads, kv heads, head dim, context, steps)."""
    # one index build, copied for every path: k-means on CUDA sums with float atomics
    # (scatter_add_), so separate builds may assign a few tokens differently
    template, built, qs, ids = _layer_case(device, dtype, seed, shape)
    hkv = shape[2]
    paths = {
        "reference": (StepOptions(kernels=False), False),
        "packed": (StepOptions(kernels=True), True),
        "direct": (StepOptions(kernels=True), False),
    }
    runs = {}
    for name, (options, packed) in paths.items():
        layer = _variant(template, built, options, packed)
        if name == "direct":
            assert layer.source.cluster_rows(0, ids[0]) is not None, "no direct admission here"
        runs[name] = [layer.decode(s[0] * 2, s[1, :, :hkv], s[2, :, :hkv]) for s in qs]
    fp32 = dtype == torch.float32
    tol = 1e-4 if fp32 else 2e-2  # bf16: outputs rounded to bf16
    pairs = [("reference", "packed"), ("reference", "direct")] if fp32 else []
    for first, other in [*pairs, ("packed", "direct")]:
        for step, ((o1, s1), (o2, s2)) in enumerate(zip(runs[first], runs[other], strict=True)):
            where = f"{first} vs {other}, step {step}"

            def msg(m: str, w: str = where) -> str:
                return f"{w}: {m}"

            torch.testing.assert_close(o1.float(), o2.float(), atol=tol, rtol=10 * tol, msg=msg)
            d1, d2 = s1.as_dict(), s2.as_dict()
            d1.pop("exec_tokens"), d2.pop("exec_tokens")  # the reference's is what it needed
            assert d1 == d2, (where, d1, d2)


class PackedSource(InProcessClusterSource):
    """The in-process source without its cluster table: the step fetches misses packed."""

    def cluster_base(self):  # type: ignore[no-untyped-def]
        return None


def _variant(template: RetroInferLayer, built: InProcessClusterSource, options: StepOptions,
             packed: bool) -> RetroInferLayer:  # fmt: skip
    """A layer with `options` over a copy of the template's prefilled state and source."""
    copied, source = copy.deepcopy((template, built))
    if packed:
        source.__class__ = PackedSource
    st = copied.state
    layer = RetroInferLayer(
        template.config, 0, st.kv_heads * st.group, st.kv_heads, st.head_dim, source,
        st.sequence_ids, dtype=st.dtype, device=st.device,
        on_segment=source.put, options=options,
    )  # fmt: skip
    layer.state = st
    return layer


def _layer_case(device: str, dtype: torch.dtype, seed: int, shape: tuple[int, ...]):  # type: ignore[no-untyped-def]
    """A layer prefilled with random K/V by the torch index build (the reference step; the
    interpreted k-means is slow), its source, the steps' random [3, B, Hq, D] q/k/v and the
    sequence ids. shape = (batch, q heads, kv heads, head dim, context, steps)."""
    batch, hq, hkv, d, length, steps = shape
    gen = torch.Generator().manual_seed(seed)
    kv = torch.randn(2, batch, hkv, length, d, generator=gen).to(device, dtype)
    qs = [torch.randn(3, batch, hq, d, generator=gen).to(device, dtype) for _ in range(steps)]
    ids = [f"s{b}" for b in range(batch)]
    built = InProcessClusterSource()
    template = RetroInferLayer(
        RetroInferConfig(cache_ratio=0.05), 0, hq, hkv, d, built, ids, dtype=dtype,
        device=device, on_segment=built.put, options=StepOptions(kernels=False),
    )  # fmt: skip
    template.prefill(kv[0], kv[1])
    return template, built, qs, ids


def check_slots(device: str, dtype: torch.dtype, seed: int, steps: int = 8) -> None:
    """Sequences of different lengths join and leave a layer's slots between steps: the
    Triton step (direct admission from the source's cluster rows) vs the torch reference, the
    same outputs and statistics at every step (fp32 1e-4; bf16: the Triton path alone runs)."""
    gen = torch.Generator().manual_seed(seed)
    hq, hkv, d = 8, 2, 16
    prompts = {name: torch.randn(2, 1, hkv, n, d, generator=gen).to(device, dtype)
               for name, n in (("a", 1500), ("b", 900), ("c", 2100))}  # fmt: skip
    inputs = [torch.randn(3, 3, hq, d, generator=gen).to(device, dtype) for _ in range(steps)]
    config = RetroInferConfig(cache_ratio=0.05, update_tokens=32, update_clusters=4)
    runs = []
    for options in (StepOptions(kernels=False), StepOptions(kernels=True)):
        source = InProcessClusterSource()
        layer = RetroInferLayer(config, 0, hq, hkv, d, source, [None] * 3, dtype=dtype,
                                device=device, on_segment=source.put, options=options)  # fmt: skip
        run = []
        for step, x in enumerate(inputs):
            if step in (0, 2):  # a joins at step 0, b at step 2 (slot 2, slot 0)
                name, slot = ("a", 2) if step == 0 else ("b", 0)
                layer.admit([slot], [name], prompts[name][0], prompts[name][1])
            if step == 5:  # a leaves, c takes slot 2
                layer.release(2)
                layer.admit([2], ["c"], prompts["c"][0], prompts["c"][1])
            out, stats = layer.decode(x[0] * 2, x[1, :, :hkv], x[2, :, :hkv])
            held = [b for b, s in enumerate(layer.sequence_ids) if s is not None]
            run.append((out[held], stats))
        if options.kernels:
            assert layer.state.table_ok, "the Triton step did not admit from the cluster rows"
        runs.append(run)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for step, ((o1, s1), (o2, s2)) in enumerate(zip(*runs, strict=True)):
        where = f"slots, step {step}"
        torch.testing.assert_close(o1.float(), o2.float(), atol=tol, rtol=10 * tol, msg=where)
        d1, d2 = s1.as_dict(), s2.as_dict()
        d1.pop("exec_tokens"), d2.pop("exec_tokens")
        assert d1 == d2, (where, d1, d2)


def check_fetch_runs(device: str, seed: int, segments: int = 2, n: int = 20) -> None:
    """ClusterTable's fused fetch index math vs its torch reference (and the fetched rows)."""
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(seed)
    b, h, d, segs = 2, 3, 8, []
    for _ in range(segments):
        c = int(torch.randint(5, 40, (), generator=gen))
        sizes = torch.randint(0, 6, (b, h, c), generator=gen)
        offsets = torch.zeros(b, h, c + 1, dtype=torch.int64)
        offsets[..., 1:] = sizes.cumsum(-1)
        length = int(offsets[..., -1].max()) + 1
        keys, values = torch.randn(2, b, h, length, d, generator=gen).to(device)
        segs.append(SimpleNamespace(sizes=sizes, offsets=offsets, keys=keys, values=values))
    table = _table_of(segs, device)
    total = table.size.shape[2]
    ids = torch.randint(-1, total, (b, h, n), generator=gen).to(device)
    width = int(table.runs_reference(ids, 1)[0][..., -1].max()) + 3  # ids may repeat
    off_ref, runs_ref = table.runs_reference(ids, width)
    off, runs = table._runs_triton(ids, width)
    _same("fetch offsets", off_ref, off)
    moved = runs_ref[3] > 0
    _same("fetch runs", runs_ref[:, moved], runs[:, moved])
    _same("fetch rows", runs_ref[3], runs[3])
    got, want = table.fetch(ids, width), table.fetch(ids, width, use_triton=False)
    rows = torch.arange(width, device=device) < off[..., -1:]
    for a, bb in zip(got[:2], want[:2], strict=True):
        _same("fetched rows", a[rows], bb[rows])


def check_direct(device: str, seed: int, rows: int = 4, segments: int = 1, steps: int = 6) -> None:
    """Direct admission (source -> cache pages before the attention) vs the reference
    (packed fetch, admission after): same state and counts; the page table lists the hit and
    admitted pages; the leftover list is the misses not admitted. A third buffer admits without
    the copy kernel and attends its appended pages through a `copy_in` view (the decode kernel
    fills them): same state, and the same attention as over the copied pages."""
    from inference_worker.retroinfer.kernels.bookkeeping import admit_direct

    table = _random_table(device, seed, rows, segments, head_dim=16)
    b, h, clusters = table.size.shape
    r, n, pt = b * h, 10, 4
    sizes = table.size.reshape(r, clusters)
    bufs = [WaveBuffer(r, 16, pt, 16, torch.float32, torch.device(device)) for _ in range(3)]
    for buf in bufs:
        buf.grow(clusters)
    gen = torch.Generator().manual_seed(seed)
    pool = torch.randperm(clusters, generator=gen)[: clusters // 2]
    width = n * 4 + 1  # pages of any n clusters (sizes < 16 tokens)
    seen = 0
    for step in range(steps):
        hot = pool[torch.randperm(pool.numel(), generator=gen)]
        ret = torch.stack([_ranked(hot, clusters, n, gen) for _ in range(r)]).to(device)
        ref = plan_step(bufs[0], ret, sizes, 10**6, width, False)
        got = plan_step(bufs[1], ret, sizes, 10**6, width, True)
        fused = plan_step(bufs[2], ret, sizes, 10**6, width, True)
        mk, mv, moff = table.fetch(ref.miss_ids.view(b, h, n), int(sizes.sum(1).max()))
        want = admit_step(bufs[0], ref, mk.view(r, -1, 16), mv.view(r, -1, 16), moff.view(r, -1))
        take, fill, count = got.take, got.fill, got.count
        rest, counts, _ = admit_direct(bufs[1], got, table, take, fill, count)
        _same(f"direct step {step} counts", want, counts)
        _same_state(step, *bufs[:2])
        _check_listed(step, ref, bufs, take, fill, count, rest)
        lo = fused.count.clone()
        rest_in_place, counts, copy_in = admit_direct(
            bufs[2], fused, table, fused.take, fused.fill, fused.count, copy=False
        )
        # admission appended to count; the plan's copy still holds the hit pages
        _same(f"direct step {step} hit pages", lo, fused.hit_pages())
        _same(f"direct step {step} hit pages (copy path)", ref.count, got.hit_pages())
        _same(f"direct step {step} counts (copy_in)", want, counts)
        _same(f"direct step {step} rest ids (copy_in)", rest, rest_in_place)
        _check_copy_in(step, bufs, table, (got, fused), lo, copy_in, rest, gen)
        _same_state(step, bufs[0], bufs[2])  # the attention filled the admitted pages
        seen += int((rest >= 0).sum())
    assert seen > 0, "no miss was left over: the in-place path went untested"


def _check_listed(step, ref, bufs, take, fill, count, rest) -> None:  # type: ignore[no-untyped-def]
    for i in range(take.shape[0]):
        owners = bufs[1].owner[i, : bufs[1].pages]
        hit_ids = ref.ret[i][ref.hit[i]].tolist()
        mids = ref.miss_ids[i]
        resident = bufs[0].stamp[i, mids.clamp(min=0)] >= 0
        adm = mids[: int(((mids >= 0) & resident).sum())]  # admitted: a prefix
        listed = {c for c in hit_ids + adm.tolist() if c >= 0}
        pages = sorted(p for p in range(owners.numel()) if int(owners[p]) in listed)
        k = int(count[i])
        assert sorted(take[i, :k].tolist()) == pages, (step, i)
        _same("direct fill", fill[i, :k], bufs[1].fill[i, take[i, :k]])
        left = ref.miss_ids[i][adm.numel() :]
        _same("rest ids", rest[i, : left.numel()], left)


def _check_copy_in(step, bufs, table, plans, lo, copy_in, rest, gen) -> None:  # type: ignore[no-untyped-def]
    """Attend the pages appended to bufs[2]'s page table (unfilled: copy_in; the admitted
    misses and, as the scratch page, the left-over ones) vs bufs[1]'s admitted pages (filled by
    the copy kernel) plus the left-over misses fetched packed: same result."""
    from inference_worker.retroinfer.kernels.decode_attention import ExecView, decode_attention

    got, fused = plans
    r, d, dev = got.take.shape[0], bufs[1].keys.shape[-1], got.take.device
    b, h = table.size.shape[:2]
    mk, mv, moff = table.fetch(rest.view(b, h, -1), int(table.size.sum(2).max()))
    q = torch.randn(r, 2, d, generator=gen).to(dev)
    none = torch.zeros(r, 0, d, device=dev)
    pos = torch.zeros(r, dtype=torch.int64, device=dev)
    packed = (mk.view(r, -1, d), mv.view(r, -1, d), moff.view(r, -1)[:, -1])
    views = (
        ExecView(none, none, pos, *packed, bufs[1].keys, bufs[1].values, got.take, got.fill,
                 got.count, lo),
        ExecView(none, none, pos, none, none, lo, bufs[2].keys, bufs[2].values, fused.take,
                 fused.fill, fused.count, lo, copy_in),
    )  # fmt: skip
    z = torch.zeros(r, 2, 1, device=dev)
    est = torch.full((r, 0), -1, dtype=torch.int64, device=dev)
    sz = torch.zeros(r, 1, dtype=torch.int64, device=dev)
    vs = torch.zeros(r, 1, d, device=dev)
    outs = [decode_attention(q, v, z, est, sz, vs, 0.25, use_triton=True) for v in views]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-4,
                               msg=lambda m: f"step {step} copy_in attention: {m}")  # fmt: skip


def _random_table(device: str, seed: int, rows: int, segments: int, head_dim: int):  # type: ignore[no-untyped-def]
    from types import SimpleNamespace

    gen = torch.Generator().manual_seed(seed)
    segs = []
    for _ in range(segments):
        c = int(torch.randint(30, 60, (), generator=gen))
        sizes = torch.randint(1, 16, (rows, 1, c), generator=gen)
        offsets = torch.zeros(rows, 1, c + 1, dtype=torch.int64)
        offsets[..., 1:] = sizes.cumsum(-1)
        length = int(offsets[..., -1].max()) + 1
        keys, values = torch.randn(2, rows, 1, length, head_dim, generator=gen).to(device)
        segs.append(SimpleNamespace(sizes=sizes, offsets=offsets, keys=keys, values=values))
    return _table_of(segs, device)


def _table_of(segs: list, device: str):  # type: ignore[no-untyped-def]
    """The table of segments of the same rows (a batch of sequences), one base address."""
    from inference_worker.retroinfer.kernels.cluster_table import ClusterRows, ClusterTable

    b = segs[0].sizes.shape[0]
    base_k, base_v = segs[0].keys, segs[0].values
    rows = [ClusterRows.of_parts([(seg, r) for seg in segs], base_k, base_v) for r in range(b)]
    return ClusterTable.of_rows(rows, base_k, base_v, segs[0].keys.shape[-1], torch.device(device))


def run_interpreted() -> None:
    """Small cases for TRITON_INTERPRET=1 on CPU (the interpreter is slow)."""
    patch_interpreter_index()
    seen = check_bookkeeping(3, 60, 8, 14, 6, "cpu", seed=1)  # cache pressure: evictions
    assert seen["evicted"] > 0 and seen["hits"] > 0 and seen["rejected"] > 0, seen
    seen = check_bookkeeping(2, 40, 10, 70, 5, "cpu", seed=2, cap_tokens=30)  # overflow
    assert seen["overflow"] > 0 and seen["hits"] > 0, seen
    check_bookkeeping(2, 30, 5, 9, 4, "cpu", seed=3, page_tokens=3)  # odd page size
    # 1-2 misses a step into a full cache: often the least-recent cluster alone frees enough
    # (the eviction search's lower bound must stay below the oldest stamp)
    seen = check_bookkeeping(3, 60, 2, 10, 30, "cpu", seed=4)
    assert seen["evicted"] > 0, seen
    check_layer_paths("cpu", torch.float32, seed=4, shape=(1, 8, 2, 16, 3000, 4))
    check_layer_paths("cpu", torch.float32, seed=8, shape=(2, 8, 2, 16, 1500, 3))
    check_slots("cpu", torch.float32, seed=9)
    check_fetch_runs("cpu", seed=5, segments=1)
    check_direct("cpu", seed=6)
    print("ok")


if __name__ == "__main__":
    run_interpreted()
