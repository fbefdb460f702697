"""Per-step decode statistics of one RetroInfer layer."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .index import IndexSegment

if TYPE_CHECKING:
    from .wave_buffer import AdmitResult

# order of the entries of the per-step counts tensor (StepStats.counts keys)
COUNT_NAMES = (
    "hits",
    "misses",
    "admitted",
    "rejected",
    "evicted",
    "overflow_clusters",
    "retrieved_tokens",
)


def step_counts(
    hit: torch.Tensor,  # [R, n_ret] bool: retrieved cluster found in the wave buffer
    miss: torch.Tensor,  # [R, n_ret] bool: retrieved cluster fetched from the source
    admitted: AdmitResult,
    overflow: torch.Tensor,  # [R, n_ret] bool: did not fit the execution buffer (estimated)
    ret_valid: torch.Tensor,  # [R, n_ret] bool: attended exactly
    ret_sizes: torch.Tensor,  # [R, n_ret] int64 tokens per retrieved cluster
) -> torch.Tensor:
    """The step's counts as one [7] int64 device tensor, in COUNT_NAMES order (no sync)."""
    return torch.stack(
        [
            hit.sum(),
            miss.sum(),
            admitted.admitted.sum(),
            admitted.rejected.sum(),
            admitted.evicted.sum(),
            overflow.sum(),
            torch.where(ret_valid, ret_sizes, 0).sum(),
        ]
    )


@dataclass(slots=True)
class StepStats:
    """Counts summed over the step's (slot, kv_head) rows (free slots count nothing).

    Tensor-valued counts stay on the device until `as_dict()` is called, so reading them is the
    caller's choice of synchronisation point.
    """

    num_clusters: int = 0  # the index's width: the largest slot's clusters per kv_head
    retrieval_clusters: int = 0  # n_ret (of the width)
    estimation_clusters: int = 0  # n_est
    steady_tokens: int = 0  # the longest steady zone (the new token included)
    exec_tokens: int = 0  # execution-buffer width attended exactly (steady + misses + hit pages)
    dense: bool = True  # no index yet: the whole context was attended exactly
    counts: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> [] int64 tensor
    # index updates of this step (upload them): (sequence ids of the segment's rows, segment)
    new_segments: list[tuple[list[Hashable], IndexSegment]] = field(default_factory=list)
    # only with StepOptions(record_selection=True): "retrieved" [B, Hkv, n_ret] global cluster ids
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
            "index_update": bool(self.new_segments),
        }
        out.update({k: int(v.item()) for k, v in self.counts.items()})
        return out
