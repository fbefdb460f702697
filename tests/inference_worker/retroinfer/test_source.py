"""In-process ClusterSource: batched and per-sequence fetches return exactly the clusters asked."""

from __future__ import annotations

import pytest
import torch

from inference_worker.retroinfer import InProcessClusterSource, build_segment


def _segments(gen, first_cluster=0, n=200, per_seg=6, position=0):
    keys, values = torch.randn(2, 3, n, 4, generator=gen), torch.randn(2, 3, n, 4, generator=gen)
    return build_segment(keys, values, position, 1, first_cluster, 2, per_seg, 10, 64)


def _expected(segs, b, h, ids):
    parts_k, sizes = [], []
    for c in ids:
        if c < 0:
            sizes.append(0)
            continue
        seg = next(s for s in segs if s.first_cluster <= c < s.first_cluster + s.num_clusters)
        lo, hi = seg.offsets[b, h, c - seg.first_cluster : c - seg.first_cluster + 2].tolist()
        parts_k.append(seg.keys[b, h, lo:hi])
        sizes.append(hi - lo)
    return torch.cat(parts_k), sizes


@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])
def test_fetch_packs_requested_clusters_in_order(order):
    gen = torch.Generator().manual_seed(0)
    first = _segments(gen)
    second = _segments(gen, first_cluster=first.num_clusters, n=40, per_seg=2, position=200)
    source = InProcessClusterSource()
    source.put(["a", "b"], first)
    source.put(["a", "b"], second)
    ids = torch.randint(0, 16, (2, 3, 5), generator=gen)
    ids[0, 1, 4] = -1
    fetched = source.fetch(1, list(order), ids, 400)
    assert fetched.keys.shape == (2, 3, 400, 4)
    for b, name in enumerate(order):
        for h in range(3):
            want, sizes = _expected([first, second], ("a", "b").index(name), h, ids[b, h].tolist())
            offs = fetched.offsets[b, h]
            assert offs.diff().tolist() == sizes
            torch.testing.assert_close(fetched.keys[b, h, : int(offs[-1])], want)


def test_put_rejects_wrong_numbering_and_unknown_sequences():
    gen = torch.Generator().manual_seed(1)
    source = InProcessClusterSource()
    with pytest.raises(ValueError, match="first_cluster must be 0 for layer 1, got 5"):
        source.put(["a", "b"], _segments(gen, first_cluster=5))
    with pytest.raises(ValueError, match="sequence_ids has 1 ids but the segment holds 2"):
        source.put(["a"], _segments(gen))
    source.put(["a", "b"], _segments(gen))
    with pytest.raises(KeyError, match="no segments for sequence 'zz' at layer 1"):
        source.fetch(1, ["a", "zz"], torch.zeros(2, 3, 1, dtype=torch.int64), 8)


def test_direct_admission_only_up_to_the_cluster_limit(monkeypatch):
    """Above DIRECT_MAX_CLUSTERS clusters per row the fast step takes the packed fetch (its
    misses admitted after the attention); at or below it, the source's cluster table."""
    from inference_worker.retroinfer import RetroInferConfig, fast_step
    from tests.retro_fixtures import make_layer

    layer, _ = make_layer(RetroInferConfig(), 8, 2, 16, batch=1)
    gen = torch.Generator().manual_seed(0)
    layer.prefill(*torch.randn(2, 1, 2, 3000, 16, generator=gen))
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the CPU table exists for the interpreter
    c = layer.num_clusters
    assert 0 < c <= fast_step.DIRECT_MAX_CLUSTERS
    assert fast_step._direct_table(layer) is not None
    monkeypatch.setattr(fast_step, "DIRECT_MAX_CLUSTERS", c - 1)
    assert fast_step._direct_table(layer) is None
    monkeypatch.setattr(fast_step, "DIRECT_MAX_CLUSTERS", c)
    assert fast_step._direct_table(layer) is not None
    layer.direct_admission = False
    assert fast_step._direct_table(layer) is None


def test_cluster_table_row_range_reads_the_parent_rows():
    """A row range of the cluster table (one micro-batch of the fast step) locates exactly what
    the whole table locates for those rows; bad ranges are rejected."""
    from tests.inference_worker.retroinfer.kernels.book_cases import _random_table

    table = _random_table("cpu", seed=3, rows=5, segments=2, head_dim=4)
    b, h, c = table.size.shape  # rows are (b, h) flattened: 5 x 1 here
    ids = torch.randint(-1, c, (b, h, 6), generator=torch.Generator().manual_seed(4))
    offs, runs = table.runs_reference(ids, 100)  # runs [4, rows * 6]: src k, src v, dst, rows
    part = table.row_range(1, 4)
    assert part.size.shape == (1, 3, c) and part.base_k is table.base_k
    got_offs, got_runs = part.runs_reference(ids.view(1, 5, 6)[:, 1:4], 100)
    assert torch.equal(got_offs, offs.view(1, 5, 7)[:, 1:4])
    want = runs.view(4, 5, 6)[:, 1:4].reshape(4, -1)
    assert torch.equal(got_runs[[0, 1, 3]], want[[0, 1, 3]])  # source offsets (k, v), rows
    assert bool((got_runs[0] != runs[0, :18]).any())  # not simply the first rows
    with pytest.raises(ValueError, match="0 <= lo < hi <= 5, got 2, 9"):
        table.row_range(2, 9)
