"""Per-step decode statistics of one RetroInfer layer."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .index import IndexSegment


@dataclass(slots=True)
class StepStats:
    """Counts summed over the step's (sequence, kv_head) rows.

    Tensor-valued counts stay on the device until `as_dict()` is called, so reading them is the
    caller's choice of synchronisation point.
    """

    num_clusters: int = 0  # clusters per (sequence, kv_head) in the index
    retrieval_clusters: int = 0  # n_ret
    estimation_clusters: int = 0  # n_est
    steady_tokens: int = 0  # steady-zone length (same for every row)
    exec_tokens: int = 0  # execution-buffer width attended exactly (steady + misses + hit pages)
    dense: bool = True  # no index yet: the whole context was attended exactly
    counts: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [] int64 tensor
    new_segment: IndexSegment | None = None  # index update produced this step (upload it)
    # only when RetroInferLayer.record_selection: "retrieved" [B, Hkv, n_ret] global cluster ids
    # attended exactly, "estimated" [B, Hkv, n_ret + n_est] ids with "estimated_mask" saying which
    # of them were estimated (overflowed retrieval clusters included)
    selection: dict[str, torch.Tensor] | None = None

    def as_dict(self) -> dict[str, int | bool]:
        """Plain numbers (synchronises with the device)."""
        out: dict[str, int | bool] = {
            "num_clusters": self.num_clusters,
            "retrieval_clusters": self.retrieval_clusters,
            "estimation_clusters": self.estimation_clusters,
            "steady_tokens": self.steady_tokens,
            "exec_tokens": self.exec_tokens,
            "dense": self.dense,
            "index_update": self.new_segment is not None,
        }
        out.update({k: int(v.item()) for k, v in self.counts.items()})
        return out
