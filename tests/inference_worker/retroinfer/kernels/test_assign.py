"""Index-build kernels: references vs brute force (CPU), the Triton kernels vs the references
interpreted on CPU (TRITON_INTERPRET=1, subprocess) and compiled on CUDA (skipped without a GPU;
the recorded GPU run is benchmarks/results/index_build_cuda.json)."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer import build_segment
from inference_worker.retroinfer.kernels.assign import (
    AssignTiles,
    assign_labels,
    assign_labels_reference,
    sort_clusters,
)
from inference_worker.retroinfer.kernels.cluster_sums import cluster_sums_reference
from tests.inference_worker.retroinfer.kernels.assign_cases import (
    check_assign,
    check_build,
    check_segment,
    check_sums,
)
from tests.interpret import run_check

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_assign_reference_is_brute_force_argmax():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 7, generator=gen)
    c = torch.randn(3, 9, 7, generator=gen)
    shift = torch.randn(3, 7, generator=gen)
    lengths = torch.tensor([50, 20, 0])
    got = assign_labels_reference(x, c, lengths, shift)
    for r in range(3):
        for n in range(50):
            if n >= int(lengths[r]):
                assert int(got[r, n]) == 9
                continue
            scores = [float((x[r, n] - shift[r]).double() @ c[r, j].double()) for j in range(9)]
            assert int(got[r, n]) == max(range(9), key=lambda j: scores[j])


def test_sort_clusters_and_sums_reference_match_a_loop():
    gen = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 6, (2, 40), generator=gen, dtype=torch.int32)  # 5 = padding
    order, offsets = sort_clusters(labels, 5)
    x = torch.randn(2, 40, 3, generator=gen)
    prev = torch.randn(2, 5, 3, generator=gen)
    sums, rows = cluster_sums_reference(x, order, offsets, gather=True)
    unit, _ = cluster_sums_reference(x, order, offsets, normalize_prev=prev)
    assert rows is not None
    for r in range(2):
        for j in range(5):
            members = [n for n in range(40) if int(labels[r, n]) == j]  # token order
            lo, hi = int(offsets[r, j]), int(offsets[r, j + 1])
            assert order[r, lo:hi].tolist() == members
            want = x[r, members].sum(0) if members else torch.zeros(3)
            torch.testing.assert_close(sums[r, j], want)
            torch.testing.assert_close(rows[r, lo:hi], x[r, members])
            want_unit = torch.nn.functional.normalize(want, dim=0) if members else prev[r, j]
            torch.testing.assert_close(unit[r, j], want_unit)
        assert int(offsets[r, 5]) == int((labels[r] < 5).sum())


def test_torch_build_keeps_the_segment_invariants():
    gen = torch.Generator().manual_seed(2)
    keys = torch.randn(2, 2, 333, 8, generator=gen)
    values = torch.randn(2, 2, 333, 8, generator=gen)
    seg = build_segment(keys, values, 5, 0, 0, 2, 7, 10, 64, use_triton=False)
    check_segment(seg, keys, values, 5)


def test_bad_shapes_and_tiles_are_rejected_with_values():
    x, c = torch.zeros(2, 5, 4), torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"centroids must be \[R \* S, C >= 1, D\] = \[2, C, 4\]"):
        assign_labels(x, torch.zeros(2, 3, 5))
    with pytest.raises(ValueError, match=r"num_segments must be in \[1, N = 5\], got 6"):
        assign_labels(x, c, num_segments=6)
    with pytest.raises(ValueError, match=r"shift must be \[R, D\] = \[2, 4\], got \[4\]"):
        assign_labels(x, c, shift=torch.zeros(4))
    with pytest.raises(ValueError, match=r"lengths must be \[R \* S\] = \[2\], got \[3\]"):
        assign_labels(x, c, lengths=torch.zeros(3))
    with pytest.raises(ValueError, match="block_c must be a power of two >= 16, got 48"):
        AssignTiles(block_c=48)


def test_triton_kernels_match_references_interpreted():
    pytest.importorskip("triton")
    run_check(["-m", "tests.inference_worker.retroinfer.kernels.assign_cases"])


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_assign_matches_reference(dtype):
    check_assign(3, 1000, 300, 128, dtype, "cuda", seed=11)  # partial centroid tiles
    check_assign(4, 777, 512, 128, dtype, "cuda", seed=12)  # whole tiles
    check_assign(2, 100, 40, 64, dtype, "cuda", seed=13)
    check_assign(2, 3001, 64, 128, dtype, "cuda", seed=14, segments=3)  # in-segment shape


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_cluster_sums_match_reference(dtype):
    check_sums(3, 5000, 400, 128, dtype, "cuda", seed=21)
    check_sums(2, 5001, 100, 128, dtype, "cuda", seed=22, segments=4)


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_build_invariants_and_quality(dtype):
    check_build(2, 4, 20000, 128, 3, 400, dtype, "cuda", seed=31)
    check_build(1, 2, 1024, 128, 1, 64, dtype, "cuda", seed=32)  # an index update's shape
