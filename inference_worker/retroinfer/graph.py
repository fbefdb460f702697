"""One layer's decode step replayed from a CUDA graph (the per-layer benchmark and profiler; the
engine captures a whole model's step: inference_worker.model.retro_graph)."""

from __future__ import annotations

import torch

from .kernels.step_io import load_step, unload_step
from .layer import RetroInferLayer
from .stats import StepStats


class LayerGraph:
    """`decode(q, k_new, v_new)` == layer.decode(...) with the step replayed from a graph,
    captured at the first call and again whenever the layer's graph key changes (an index
    update, a grown steady zone)."""

    def __init__(self, layer: RetroInferLayer) -> None:
        if not layer.capturable():
            raise ValueError(f"layer {layer.layer} cannot capture its step (see capturable())")
        self.layer = layer
        self.q = torch.zeros_like(layer._q)  # [B, Hq, D] read in place by the graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple[int, ...] | None = None
        self.captures = 0
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None
        self._exec_tokens = 0

    def decode(
        self, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, StepStats]:
        layer = self.layer
        layer.begin_step()
        steady = layer.steady
        load_step(k_new, v_new, steady.keys, steady.values, layer.positions, q, self.q)
        if layer.graph_key() != self.key:
            self._capture()
        assert self.graph is not None and self._out is not None
        self.graph.replay()
        out, counts = unload_step(*self._out, q.dtype)
        return out.view(q.shape), layer.finish_step(counts, self._exec_tokens)

    def _capture(self) -> None:
        """A warm-up run (its wave-buffer changes undone), then the capture."""
        layer = self.layer
        qg = self.q.view(layer.rows, layer.group, layer.head_dim)
        saved = layer.snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            layer.step(qg)
        torch.cuda.current_stream().wait_stream(side)
        layer.restore(saved)
        self.key = layer.graph_key()  # after the warm-up (it may allocate scratch)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            out, counts, self._exec_tokens = layer.step(qg)
        self._out = (out, counts)
        self.captures += 1
