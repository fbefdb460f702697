"""RetroInfer decode steps of the whole model replayed from one CUDA graph (the engine's
decode step on CUDA).

The whole `model(tokens, meta, backend, last_only=True)` call is captured with
`FixedStepBackend`, whose per-layer call is the layer's host-sync-free device step
(`RetroInferLayer.step`: fixed execution-buffer widths, the steady position read from a device
tensor written before each replay). Host-side state (steady-zone lengths, index updates,
statistics) advances outside the graph after each replay (`finish_step`); the graph is
re-captured when a layer's graph key changes (new clusters, a grown steady zone).

Hybrid models (Gemma 3): RetroInfer covers the global layers; the sliding-window layers decode
through a `WindowBackend` (device rings, plain torch, captured in the same graph).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor

from inference_worker.model.attention import AttentionMetadata
from inference_worker.model.llama import CausalLM
from inference_worker.retroinfer import RetroInferLayer, StepStats

log = logging.getLogger(__name__)


class WindowBackend(Protocol):
    """Decode attention of the model layers RetroInfer does not index (sliding-window layers)."""

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor: ...

    def forget_call(self) -> None:
        """Drop per-call state so the next call rebuilds it (around a graph capture)."""


class FixedStepBackend:
    """Attention backend over RetroInfer layers that runs each layer's device step
    (`RetroInferLayer.step`): usable eagerly and under CUDA-graph capture. Per step:
    `prepare()` before the forward (each layer's host side), the forward, then
    `finish(counts)` (each layer's host side after the step). `layers` maps model layer ->
    its RetroInferLayer; every other model layer decodes through `window`."""

    def __init__(
        self, layers: Mapping[int, RetroInferLayer], window: WindowBackend | None = None
    ) -> None:
        if not layers:
            raise ValueError("FixedStepBackend needs at least one RetroInferLayer, got 0")
        self.by_model_layer = dict(layers)
        self.layers = [layers[i] for i in sorted(layers)]  # model-layer order
        self.window = window
        self.counts: list[Tensor] = []  # per layer [7] int64, this forward's
        self.exec_tokens: list[int] = []  # per layer, execution-buffer width of this forward
        self.undo_buffers = False  # warm-up run: restore each wave buffer after its step

    def supported(self) -> bool:
        """Every layer can capture its step (indexed, Triton on CUDA, a capturable source)."""
        return all(layer.capturable() for layer in self.layers)

    def prepare(self) -> None:
        """Before a forward: each layer's begin_step (the positions live on the device)."""
        for layer in self.layers:
            layer.begin_step()
        self.counts, self.exec_tokens = [], []

    def shape_key(self) -> tuple[tuple[int, ...], ...]:
        """What a captured graph depends on: every layer's graph key."""
        return tuple(layer.graph_key() for layer in self.layers)

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """q [B, Hq, 1, D], k/v [B, Hkv, 1, D] -> [B, Hq, 1, D]."""
        lay = self.by_model_layer.get(layer)
        if lay is None:
            assert self.window is not None, f"layer {layer} has no attention"
            return self.window.decode(layer, q, k, v, meta)
        dt = lay.dtype
        qg = q[:, :, 0].to(dt).reshape(lay.rows, lay.group, lay.head_dim)
        saved = lay.snapshot() if self.undo_buffers else None
        out, counts, width = lay.step(qg, k[:, :, 0].to(dt), v[:, :, 0].to(dt))
        if saved is not None:
            lay.restore(saved)
        self.counts.append(counts)
        self.exec_tokens.append(width)
        return out.reshape(q.shape[0], q.shape[1], -1).to(q.dtype).unsqueeze(2)

    def prefill(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        raise RuntimeError("FixedStepBackend only decodes: prefill the RetroInfer layers first")

    def finish(self, counts: Tensor, exec_tokens: Sequence[int]) -> list[StepStats]:
        """After a forward: counts [L, 7] (kept by the caller) -> each layer's StepStats
        (steady lengths advance, index updates run, as decode() does after its step)."""
        return [layer.finish_step(counts[i], exec_tokens[i]) for i, layer in enumerate(self.layers)]


class _DecodeBackend:
    """The eager reference: each layer's own decode() (used where graphs cannot run)."""

    def __init__(self, layers: dict[int, RetroInferLayer], window: WindowBackend | None) -> None:
        self.layers, self.window = layers, window
        self.stats: list[StepStats] = []

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        lay = self.layers.get(layer)
        if lay is None:
            assert self.window is not None, f"layer {layer} has no attention"
            return self.window.decode(layer, q, k, v, meta)
        out, stats = lay.decode(q[:, :, 0], k[:, :, 0], v[:, :, 0])
        self.stats.append(stats)
        return out.unsqueeze(2)

    def prefill(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        raise RuntimeError("the RetroInfer decode backend only decodes")


class GraphedRetroDecoder:
    """RetroInfer decode steps of `model` replayed from one CUDA graph (CUDA only).

    step(tokens, start_pos) == model(tokens [B, 1], AttentionMetadata.decode(start_pos),
    <backend calling each layer's decode()>, last_only=True): logits [B, V] (a static buffer,
    overwritten by the next step) and each layer's StepStats. Steps that cannot be captured
    (see RetroInferLayer.capturable: a layer without an index, the torch reference step,
    recorded selections, a source whose misses need a host-side fetch; or a failed capture)
    run eagerly through each layer's decode().
    """

    def __init__(
        self,
        model: CausalLM,
        layers: Mapping[int, RetroInferLayer],
        window: WindowBackend | None = None,
    ) -> None:
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, got device={model.device}")
        n = model.config.num_layers
        others = [i for i in range(n) if i not in layers]
        if not layers or any(not 0 <= i < n for i in layers) or (others and window is None):
            raise ValueError(
                f"need RetroInferLayers for some of the model's layers 0..{n - 1} (got "
                f"{sorted(layers)}) and a window backend for the others ({others})"
            )
        self.model = model
        self.window = window
        self.backend = FixedStepBackend(layers, window)
        self.layers = self.backend.layers
        self.batch_size = self.layers[0].batch
        self.eager = _DecodeBackend(self.backend.by_model_layer, window)
        self.use_graph = True  # until a capture fails
        self.tokens = torch.zeros(self.batch_size, 1, dtype=torch.int64, device=model.device)
        self.meta = AttentionMetadata.decode([0] * self.batch_size, model.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self._key: tuple[tuple[int, ...], ...] | None = None
        self._logits: Tensor | None = None  # [B, V] graph output
        self._counts: Tensor | None = None  # [L, 7] graph output
        self._exec_tokens: list[int] = []
        self.captures = 0  # graphs captured so far (shape changes re-capture)
        self.eager_steps = 0

    @torch.inference_mode()
    def step(self, tokens: Tensor, start_pos: Sequence[int]) -> tuple[Tensor, list[StepStats]]:
        """tokens [B] int64 on the device, start_pos B ints (RoPE positions of the new tokens)
        -> (logits [B, V], StepStats per layer)."""
        if len(start_pos) != self.batch_size or tokens.numel() != self.batch_size:
            raise ValueError(
                f"need {self.batch_size} tokens and start positions, got {tokens.numel()} "
                f"and {len(start_pos)}"
            )
        if not (self.use_graph and self.backend.supported()):
            return self._eager(tokens, start_pos)
        self.backend.prepare()
        starts = torch.tensor(list(start_pos), dtype=torch.int64)  # [B] on the host
        self.tokens.copy_(tokens.view(self.batch_size, 1))
        self.meta.start_pos.copy_(starts, non_blocking=True)
        self.meta.positions.copy_(starts[:, None], non_blocking=True)
        if self.backend.shape_key() != self._key:
            if not self._capture():
                return self._eager(tokens, start_pos)
            self._key = self.backend.shape_key()  # after the warm-up (it may allocate scratch)
        assert self.graph is not None and self._counts is not None and self._logits is not None
        self.graph.replay()
        return self._logits, self.backend.finish(self._counts.clone(), self._exec_tokens)

    def _capture(self) -> bool:
        """Warm up (wave buffers restored after each layer), then capture one forward."""
        self.graph = self._logits = self._counts = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream):
                self.backend.undo_buffers = True
                self.model(self.tokens, self.meta, self.backend, last_only=True)
            torch.cuda.current_stream().wait_stream(stream)
            self.backend.undo_buffers = False
            self.backend.counts, self.backend.exec_tokens = [], []
            if self.window is not None:
                self.window.forget_call()  # its per-call state is built inside the graph
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self.model(self.tokens, self.meta, self.backend, last_only=True)
                counts = torch.stack(self.backend.counts)  # [L, 7]
        except RuntimeError as err:  # capture unsupported here: stay correct, run eager
            log.warning("whole-step CUDA graph capture failed (%s); running eager", err)
            self.backend.undo_buffers = False
            self.use_graph = False
            return False
        if self.window is not None:
            self.window.forget_call()
        self.graph, self._logits, self._counts = graph, logits, counts
        self._exec_tokens = list(self.backend.exec_tokens)
        self.captures += 1
        log.debug("captured the RetroInfer decode step (%d so far)", self.captures)
        return True

    def _eager(self, tokens: Tensor, start_pos: Sequence[int]) -> tuple[Tensor, list[StepStats]]:
        self.eager_steps += 1
        self.eager.stats = []
        meta = AttentionMetadata.decode(start_pos, self.model.device)
        logits = self.model(tokens.view(self.batch_size, 1), meta, self.eager, last_only=True)
        return logits, self.eager.stats
