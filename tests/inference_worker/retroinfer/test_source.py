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


def test_sources_declare_their_capabilities():
    """A source without a table or a device-only fetch says so through the protocol's
    defaults; the in-process source declares both."""
    from inference_worker.retroinfer import ClusterSource, FetchedBatch

    class Minimal(ClusterSource):
        def fetch(self, layer, sequence_ids, cluster_ids, max_tokens) -> FetchedBatch:  # type: ignore[no-untyped-def]
            raise NotImplementedError

    assert Minimal().cluster_table(0, ["a"]) is None and not Minimal().graph_safe()
    source = InProcessClusterSource()
    assert source.graph_safe() and source.cluster_table(0, ["a"]) is None  # nothing uploaded
    with pytest.raises(TypeError, match="abstract"):
        ClusterSource()  # type: ignore[abstract]
