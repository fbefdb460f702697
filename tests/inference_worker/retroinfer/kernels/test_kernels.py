"""RetroInfer decode kernels: the torch references against independent brute-force computations
(CPU, always), and the Triton kernels against the references on fresh random inputs (CUDA; the
copy, selection, attention and combine kernels also interpreted on CPU; on a GPU host
`bash scripts/gpu_suite.sh tests` runs the CUDA part)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from inference_worker.retroinfer import (
    InProcessClusterSource,
    RetroInferConfig,
    RetroInferLayer,
    StepOptions,
)
from inference_worker.retroinfer.kernels import (
    combine_partials,
    copy_runs_reference,
    decode_attention_reference,
    estimate_partials_reference,
    kernels_available,
    rank_select_reference,
)
from inference_worker.retroinfer.source import _gather
from tests.inference_worker.retroinfer.kernels.cases import (
    attention_case,
    check_attention,
    check_copy,
    check_rank_int8,
    check_select_full_row,
    check_select_ties,
    compare_all,
    estimate_case,
    rank_case,
)
from tests.interpret import run_check

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_cpu_never_uses_triton():
    assert not kernels_available("cpu") or __import__("os").environ.get("TRITON_INTERPRET")


def test_rank_reference_is_the_brute_force_top_k():
    case = rank_case(3, 4, 200, 16, torch.float32, "cpu", seed=1)
    sel = rank_select_reference(**case)
    for r in range(3):
        score = []
        for j in range(200):
            if case["sizes"][r, j] == 0:
                score.append(0.0)
                continue
            total = 0.0
            for g in range(4):
                logits = (case["centroids"][r].double() @ case["q"][r, g].double()) * case["scale"]
                logits[case["sizes"][r] == 0] = -math.inf
                total += float(torch.softmax(logits, 0)[j])
            score.append(total)
        order = sorted(range(200), key=lambda j: -score[j])
        n_ret, n_est = case["n_ret"], case["n_est"]
        assert sel.retrieved[r].tolist() == order[:n_ret]
        assert sorted(torch.nonzero(sel.estimated[r]).flatten().tolist()) == sorted(
            order[n_ret : n_ret + n_est]
        )


def test_estimate_reference_is_the_formula():
    case = estimate_case(2, 3, 2500, 8, "cpu", seed=2)  # 5 splits of 512 clusters
    o, lse = combine_partials(*estimate_partials_reference(**case))
    for r in range(2):
        keep = _mask(case["estimated"][r], 2500 if "view" not in case else 300)
        keep &= case["sizes"][r] > 0
        for g in range(3):
            z = case["z"][r, g, keep].double()
            w = torch.exp(z)
            num = (w.unsqueeze(1) * case["value_sums"][r, keep].double()).sum(0)
            den = (w * case["sizes"][r, keep].double()).sum()
            torch.testing.assert_close(o[r, g].double(), num / den, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lse[r, g].double(), torch.log(den), rtol=1e-5, atol=1e-5)


def _mask(ids, c):
    """List of ids (-1 = none) -> [C] bool."""
    return torch.zeros(c, dtype=torch.bool).scatter_(0, ids[ids >= 0], True)


def _listed_tokens(view, r):
    """Brute force: the valid (key, value) rows of row r, listed one by one."""
    ks, vs = [], []
    for t in range(int(view.pos[r]) + 1):
        ks.append(view.steady_k[r, t]), vs.append(view.steady_v[r, t])
    for t in range(int(view.miss_len[r])):
        ks.append(view.miss_k[r, t]), vs.append(view.miss_v[r, t])
    for p in range(int(view.hit_pages[r])):
        page = int(view.take[r, p])
        for t in range(int(view.fill[r, p])):
            ks.append(view.cache_k[r, page, t]), vs.append(view.cache_v[r, page, t])
    return torch.stack(ks).double(), torch.stack(vs).double()


def test_decode_attention_reference_is_joint_softmax():
    case = attention_case(3, 2, 8, 64, 300, torch.float32, "cpu", seed=3)
    o, lse = decode_attention_reference(**case)
    view = case["view"]
    for r in range(3):
        keys, values = _listed_tokens(view, r)
        keep = _mask(case["estimated"][r], 2500 if "view" not in case else 300)
        keep &= case["sizes"][r] > 0
        for g in range(2):
            s = keys @ case["q"][r, g].double() * case["scale"]
            z = case["z"][r, g, keep].double()
            num = (torch.exp(s).unsqueeze(1) * values).sum(0) + (
                torch.exp(z).unsqueeze(1) * case["value_sums"][r, keep].double()
            ).sum(0)
            den = torch.exp(s).sum() + (torch.exp(z) * case["sizes"][r, keep].double()).sum()
            torch.testing.assert_close(o[r, g].double(), num / den, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(lse[r, g].double(), torch.log(den), rtol=1e-5, atol=1e-5)


def test_combine_partials_equals_one_softmax():
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 12, 3, generator=gen) * 4  # [R, T, G]
    values = torch.randn(2, 12, 5, generator=gen)
    logits[0, 4:8] = -math.inf  # an empty split
    split = logits.view(2, 3, 4, 3)  # [R, S, T/S, G]
    m = split.amax(2)
    w = torch.exp(split - m.clamp(min=-1e30).unsqueeze(2)).nan_to_num(0)
    acc = torch.einsum("rstg,rstd->rsgd", w, values.view(2, 3, 4, 5))
    o, lse = combine_partials(m, w.sum(2), acc)
    p = torch.softmax(logits, dim=1)
    torch.testing.assert_close(o, torch.einsum("rtg,rtd->rgd", p, values))
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=1))


def test_copy_runs_reference_is_a_row_loop():
    gen = torch.Generator().manual_seed(5)
    src_k, src_v = torch.randn(100, 4, generator=gen), torch.randn(100, 4, generator=gen)
    starts, dsts, rows = [3, 50, 0, 90], [0, 7, 30, 40], [7, 20, 0, 10]
    dk, dv = torch.zeros(60, 4), torch.zeros(60, 4)
    t = lambda xs: torch.tensor(xs) * 4  # noqa: E731 - element offsets
    copy_runs_reference(src_k, src_v, dk, dv, t(starts), t(starts), t(dsts), torch.tensor(rows), 4)
    ek, ev = torch.zeros(60, 4), torch.zeros(60, 4)
    for s, d, n in zip(starts, dsts, rows, strict=True):
        for i in range(n):
            ek[d + i], ev[d + i] = src_k[s + i], src_v[s + i]
    assert torch.equal(dk, ek) and torch.equal(dv, ev)


def test_copy_select_attention_kernels_match_references_interpreted():
    """Page-sized and cluster-sized copy runs; the selection with exact score ties; the
    decode kernel at two launch shapes."""
    pytest.importorskip("triton")
    run_check(["-m", "tests.inference_worker.retroinfer.kernels.cases"])


@cuda
def test_copy_select_attention_kernels_match_references_gpu():
    check_select_full_row("cuda")
    check_rank_int8("cuda", torch.bfloat16, seed=25, c=8192)
    check_rank_int8("cuda", torch.float32, seed=26)
    check_copy("cuda", torch.bfloat16, seed=21)
    check_select_ties("cuda", seed=22)
    check_attention("cuda", seed=23, kv_dtype=torch.bfloat16)  # bf16 value sums too
    check_attention("cuda", seed=24)


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernels_match_references_gpu(dtype):
    result = compare_all("cuda", dtype, seed=11)
    assert result["rank_retrieved_equal"] and result["rank_estimated_equal"]
    assert result["rank_30000_clusters_equal"]
    assert result["copy_equal"]
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    for key in ("rank_z_max_abs", "estimate_o_max_abs", "attention_o_max_abs"):
        assert result[key] < tol * 10, (key, result[key])
    assert result["attention_lse_max_abs"] < tol, result


def _layer(use_kernels, dtype, batch=2, source=None):
    ids = [f"s{b}" for b in range(batch)]
    source = source or InProcessClusterSource()
    return RetroInferLayer(
        RetroInferConfig(cache_ratio=0.05), 0, 32, 8, 128, source, ids, dtype=dtype,
        device="cuda", on_segment=source.put,
        options=StepOptions(kernels=use_kernels),
    )  # fmt: skip


@cuda
def test_layer_fast_path_matches_reference_path_gpu():
    gen = torch.Generator(device="cuda").manual_seed(12)
    kv = torch.randn(2, 2, 8, 6000, 128, generator=gen, device="cuda")
    steps = [torch.randn(3, 2, 32, 128, generator=gen, device="cuda") for _ in range(6)]
    runs = []
    for fast in (False, True):
        layer = _layer(fast, torch.float32)
        layer.prefill(kv[0], kv[1])
        runs.append([layer.decode(s[0] * 2, s[1, :, :8], s[2, :, :8]) for s in steps])
    for (o1, s1), (o2, s2) in zip(*runs, strict=True):
        torch.testing.assert_close(o1, o2, atol=1e-4, rtol=1e-3)
        assert s1.as_dict() == s2.as_dict()


@cuda
def test_pinned_host_fetch_matches_reference_gather_gpu():
    gen = torch.Generator(device="cuda").manual_seed(13)
    kv = torch.randn(2, 2, 8, 5000, 128, generator=gen, device="cuda").bfloat16()
    layer = _layer(True, torch.bfloat16)
    (segment,) = layer.prefill(kv[0], kv[1])
    for name in ("keys", "values"):
        setattr(segment, name, getattr(segment, name).cpu().pin_memory())
    source = InProcessClusterSource()
    source.put(layer.sequence_ids, segment)
    ids = torch.randint(-1, segment.num_clusters, (2, 8, 20), generator=gen, device="cuda")
    got = source.fetch(0, layer.sequence_ids, ids, 2048)
    host = dataclasses.replace(segment, offsets=segment.offsets.cpu())
    want = _gather([host], None, ids.cpu(), 2048)
    assert torch.equal(got.offsets.cpu(), want.offsets)
    valid = torch.arange(2048) < want.offsets[..., -1:]
    assert torch.equal(got.keys.cpu()[valid], want.keys[valid])
    assert torch.equal(got.values.cpu()[valid], want.values[valid])


@pytest.mark.parametrize("count", [0, 4])
def test_combine_refuses_a_wrong_number_of_partial_sets(count):
    from inference_worker.retroinfer.kernels.decode_attention import combine
    from inference_worker.retroinfer.kernels.partials import Partials

    part = Partials(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), torch.zeros(1, 1, 1, 4))
    with pytest.raises(ValueError, match=f"combine takes 1 to 3 sets of partials, got {count}"):
        combine([part] * count)


@pytest.mark.parametrize("path", ["kernel", "reference"])
def test_copy_in_without_page_lo_is_refused_before_any_write(path):
    import dataclasses

    from inference_worker.retroinfer.kernels.decode_attention import (
        decode_attention_reference,
        exact_partials,
    )
    from tests.inference_worker.retroinfer.kernels.cases import attention_case, with_copy_in

    case = with_copy_in(attention_case(2, 4, 64, 64, 50, torch.float32, "cpu", seed=0), seed=1)
    view = dataclasses.replace(case["view"], page_lo=None)
    before = view.cache_k.clone()
    args = (case["q"], view, case["z"], case["estimated"], case["sizes"], case["value_sums"])
    fn = exact_partials if path == "kernel" else decode_attention_reference
    with pytest.raises(ValueError, match="copy_in needs page_lo"):
        fn(*args, case["scale"])
    assert torch.equal(view.cache_k, before)  # nothing written


@cuda
def test_combine_ignores_unwritten_accumulators_of_empty_splits_gpu():
    from tests.inference_worker.retroinfer.kernels.cases import check_combine_empty_splits

    check_combine_empty_splits("cuda", seed=7)
