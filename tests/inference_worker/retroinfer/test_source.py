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
    with pytest.raises(ValueError, match="first_cluster must be 0 for sequence 'a' at layer 1"):
        source.put(["a", "b"], _segments(gen, first_cluster=5))
    with pytest.raises(ValueError, match="sequence_ids has 1 ids but the segment holds 2"):
        source.put(["a"], _segments(gen))
    source.put(["a", "b"], _segments(gen))
    with pytest.raises(KeyError, match="no segments for sequence 'zz' at layer 1"):
        source.fetch(1, ["a", "zz"], torch.zeros(2, 3, 1, dtype=torch.int64), 8)


def test_sources_declare_their_capabilities():
    """A source without a table or a device-only fetch says so through the protocol's
    defaults; the in-process source declares both."""
    from inference_worker.retroinfer import ClusterSource, FetchedBatch

    class Minimal(ClusterSource):
        def fetch(self, layer, sequence_ids, cluster_ids, max_tokens) -> FetchedBatch:  # type: ignore[no-untyped-def]
            raise NotImplementedError

    minimal = Minimal()
    assert minimal.cluster_base() is None and minimal.cluster_rows(0, "a") is None
    assert not minimal.graph_safe()
    source = InProcessClusterSource()
    assert source.graph_safe() and source.cluster_rows(0, "a") is None  # nothing uploaded
    with pytest.raises(TypeError, match="abstract"):
        ClusterSource()  # type: ignore[abstract]


def test_a_free_slot_fetches_nothing_and_sequences_mix_across_uploads():
    """Slots of one fetch may hold sequences uploaded in different batches, or none."""
    gen = torch.Generator().manual_seed(2)
    ab, c = _segments(gen), _segments(gen)
    source = InProcessClusterSource()
    source.put(["a", "b"], ab)
    source.put(["c", "d"], c)
    ids = torch.randint(0, 12, (3, 3, 4), generator=gen)
    fetched = source.fetch(1, ["c", None, "a"], ids, 300)
    assert int(fetched.offsets[1].abs().sum()) == 0  # the free slot
    for b, (seg, row) in ((0, (c, 0)), (2, (ab, 0))):
        for h in range(3):
            want, sizes = _expected([seg], row, h, ids[b, h].tolist())
            assert fetched.offsets[b, h].diff().tolist() == sizes
            torch.testing.assert_close(fetched.keys[b, h, : sum(sizes)], want)


def test_cluster_rows_address_every_cluster_from_one_base():
    """ClusterRows.of_parts: a sequence's clusters over two segments, as element offsets from a
    base address, read back exactly what the segments hold."""
    from inference_worker.retroinfer.kernels.cluster_table import ClusterRows

    gen = torch.Generator().manual_seed(3)
    first = _segments(gen)
    second = _segments(gen, first_cluster=first.num_clusters, n=40, per_seg=2, position=200)
    base = first.keys  # any tensor of the dtype: offsets may be negative
    rows = ClusterRows.of_parts([(first, 1), (second, 1)], base, base)
    flat = base.reshape(-1)  # every address below is inside `first` or `second`
    for seg in (first, second):
        for h in range(3):
            for j in range(seg.num_clusters):
                c = seg.first_cluster + j
                lo, hi = seg.offsets[1, h, j : j + 2].tolist()
                assert int(rows.size[h, c]) == hi - lo
                if seg is first and hi > lo:
                    start = int(rows.tab_k[h, c])
                    got = flat[start : start + (hi - lo) * 4].view(hi - lo, 4)
                    assert torch.equal(got, seg.keys[1, h, lo:hi])
