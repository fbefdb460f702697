"""CUDA-graph capture of one decode step (static shapes, no host synchronisation inside)."""

from __future__ import annotations

from collections.abc import Callable

import torch

StepFn = Callable[..., tuple[torch.Tensor, ...]]
State = list[torch.Tensor]


class StepGraph:
    """Captures `fn(*inputs)` once and replays it; inputs are copied into static buffers.

    `snapshot`/`restore` undo the state changes of the warm-up run that precedes the capture,
    so capturing has no visible effect besides the kernels' lazy initialisation.
    """

    def __init__(
        self,
        fn: StepFn,
        inputs: tuple[torch.Tensor, ...],
        snapshot: Callable[[], State],
        restore: Callable[[State], None],
    ) -> None:
        self.inputs = tuple(x.clone() for x in inputs)
        saved = snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        restore(saved)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = fn(*self.inputs)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for static, x in zip(self.inputs, inputs, strict=True):
            static.copy_(x)
        self.graph.replay()
        return self.outputs
