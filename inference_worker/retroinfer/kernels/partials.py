"""Split-K partial attention results, their log-sum-exp combination (torch), and running a
partial computation on a side stream."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

PartialTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # m, l, acc


@dataclass(slots=True)
class Partials:
    """Split partials (m [R, S, G], l [R, S, G], acc [R, S, G, D]), maybe still being computed
    on a side stream (`ready` is recorded there after the kernels)."""

    m: torch.Tensor
    l: torch.Tensor
    acc: torch.Tensor
    ready: torch.cuda.Event | None = None

    def wait(self) -> None:
        """Order the current stream after the computation (no host synchronisation)."""
        if self.ready is not None:
            torch.cuda.current_stream().wait_event(self.ready)

    def tensors(self) -> PartialTensors:
        return self.m, self.l, self.acc


def on_side(
    side: torch.cuda.Stream | None,
    fn: Callable[..., PartialTensors],
    *args: object,
    reads: tuple[torch.Tensor, ...] = (),
    after: torch.cuda.Event | None = None,
) -> Partials:
    """fn(*args) launched on `side`, forked from the current stream so that it runs alongside
    the current stream's next kernels; consumers call `.wait()` first. `reads`: the tensors fn
    reads (kept from reuse until `side` is done with them). side None: run in order here.
    Works under CUDA-graph capture (a fork/join of the captured stream). `after`: fork from
    this event (recorded earlier on the current stream, see `mark`) instead of from now, so
    that kernels launched on the current stream since then are not waited for and are
    dispatched first."""
    if side is None:
        return Partials(*fn(*args))
    main = torch.cuda.current_stream()
    if after is not None:
        side.wait_event(after)
    else:
        side.wait_stream(main)
    with torch.cuda.stream(side):
        parts = fn(*args)
        ready = torch.cuda.Event()
        ready.record(side)
    if not torch.cuda.is_current_stream_capturing():  # eager: the allocator's stream rules
        for t in reads:
            t.record_stream(side)  # freed on main: not reused before `side` has read them
        for t in parts:
            t.record_stream(main)  # made on side, read on main
    return Partials(*parts, ready=ready)


def mark(enabled: bool) -> torch.cuda.Event | None:
    """An event recorded on the current stream now (a later fork point for `on_side`); None
    when not `enabled` (no side streams)."""
    if not enabled:
        return None
    event = torch.cuda.Event()
    event.record()
    return event


def combine_partials(
    m: torch.Tensor,  # [R, S, G] running max of the logits per split (-inf: empty split)
    l: torch.Tensor,  # [R, S, G] sum of exp(logit - m) (times cluster sizes for estimation)
    acc: torch.Tensor,  # [R, S, G, D] sum of exp(logit - m) * value
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge S splits: (o [R, G, D] fp32, lse [R, G] fp32); rows without mass give o = 0,
    lse = -inf."""
    top = m.amax(dim=1, keepdim=True).clamp(min=-1e30)  # [R, 1, G]
    w = torch.exp(m - top)  # [R, S, G]
    den = (w * l).sum(dim=1)  # [R, G]
    num = (w.unsqueeze(-1) * acc).sum(dim=1)  # [R, G, D]
    o = num / den.clamp(min=1e-30).unsqueeze(-1)
    lse = torch.where(den > 0, top.squeeze(1) + torch.log(den.clamp(min=1e-30)), float("-inf"))
    return o, lse
