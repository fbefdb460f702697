"""RetroInfer decode steps of the whole model replayed from one CUDA graph (opt-in).

The eager RetroInfer path runs the model eagerly and replays only each layer's attention step
from its own graph; the launches of the dense layers then dominate a step. Here the whole
`model(tokens, meta, backend, last_only=True)` call is captured with `FixedStepBackend`, whose
per-layer call is the layer's host-sync-free step (fixed execution-buffer widths, the steady
position read from a device tensor written before each replay). Host-side state (steady-zone
lengths, index updates, statistics) advances outside the graph after each replay; the graph is
re-captured when shapes change (new clusters, a grown steady zone).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from inference_worker.model.attention import AttentionMetadata
from inference_worker.model.llama import CausalLM
from inference_worker.retroinfer import RetroInferLayer, StepStats
from inference_worker.retroinfer.stats import COUNT_NAMES

log = logging.getLogger(__name__)


class FixedStepBackend:
    """Attention backend over RetroInfer layers that runs each layer's fixed-width step.

    Usable eagerly (CPU or CUDA) and under CUDA-graph capture. Per step: `prepare()` before
    the forward (grows full steady zones, writes the device positions), the forward, then
    `finish(counts)` (advances host state, index updates, returns each layer's StepStats).
    Equals `RetroInferLayer.decode` with `static_shapes=True` layer by layer.
    """

    def __init__(self, layers: Sequence[RetroInferLayer]) -> None:
        if not layers:
            raise ValueError("FixedStepBackend needs at least one RetroInferLayer, got 0")
        self.layers = list(layers)
        device = self.layers[0].device
        # pos [L, 2]: column 0 is layer i's steady position of the new token; rows of 16 bytes
        # keep every layer's [1] view as aligned as a fresh tensor (one Triton specialisation)
        self.pos = torch.zeros(len(self.layers), 2, dtype=torch.int64, device=device)
        self.counts: list[Tensor] = []  # per layer [7] int64, this forward's
        self.exec_tokens: list[int] = []  # per layer, execution-buffer width of this forward
        self.undo_buffers = False  # warm-up run: restore each wave buffer after its step

    def supported(self) -> bool:
        """Every layer indexed (the dense no-index step has per-step shapes), misses exact."""
        return all(
            layer.steady is not None
            and layer.num_clusters > 0
            and not layer.config.defer_misses
            and not layer.record_selection
            for layer in self.layers
        )

    def prepare(self) -> None:
        """Before a forward: grow full steady zones, build wave buffers, write positions."""
        lengths = []
        for layer in self.layers:
            steady = layer.steady
            assert steady is not None
            if steady.length >= steady.keys.shape[2]:
                steady._resize(steady.length + 1)
                layer._graph = None
            layer._buffer(layer.num_clusters)
            lengths.append(steady.length)
        host = torch.tensor(lengths, dtype=torch.int64)[:, None].expand(-1, 2)  # [L, 2]
        self.pos.copy_(host, non_blocking=self.pos.is_cuda)
        self.counts, self.exec_tokens = [], []

    def shape_key(self) -> tuple[tuple[int, ...], ...]:
        """What a captured graph depends on: cluster counts and the buffers it addresses."""
        out = []
        for layer in self.layers:
            steady, buffer = layer.steady, layer.buffer
            assert steady is not None and buffer is not None
            scratch = buffer._scratch.data_ptr() if buffer._scratch is not None else 0
            ptrs = (steady.keys.data_ptr(), buffer.stamp.data_ptr(), scratch)
            out.append((layer.num_clusters, *ptrs))
        return tuple(out)

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        """q [B, Hq, 1, D], k/v [B, Hkv, 1, D] -> [B, Hq, 1, D]."""
        lay = self.layers[layer]
        inputs = (q[:, :, 0].to(lay.dtype), k[:, :, 0].to(lay.dtype), v[:, :, 0].to(lay.dtype))
        buffer = lay._buffer(lay.num_clusters)
        saved = buffer.snapshot() if self.undo_buffers else None
        step = lay._tripartite(*inputs, self.pos[layer, :1], widths=lay._fixed_widths())
        out, counts, marker = step[:3]  # out [R, G, D] fp32, counts [7]
        if saved is not None:
            buffer.restore(saved)
        self.counts.append(counts)
        self.exec_tokens.append(int(marker.shape[0]))
        return out.reshape(q.shape[0], q.shape[1], -1).to(q.dtype).unsqueeze(2)

    def prefill(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        raise RuntimeError("FixedStepBackend only decodes: prefill the RetroInfer layers first")

    def finish(self, counts: Tensor, exec_tokens: Sequence[int]) -> list[StepStats]:
        """After a forward: counts [L, 7] (kept by the caller) -> each layer's StepStats;
        advances steady lengths and runs index updates (as decode() does after its step)."""
        stats = []
        for i, layer in enumerate(self.layers):
            s = layer.step_stats()
            s.exec_tokens = exec_tokens[i]
            s.counts = dict(zip(COUNT_NAMES, counts[i].unbind(), strict=True))
            layer.finish_step(s)
            stats.append(s)
        return stats


class _DecodeBackend:
    """The eager reference: each layer's own decode() (used where graphs cannot run)."""

    def __init__(self, layers: list[RetroInferLayer]) -> None:
        self.layers = layers
        self.stats: list[StepStats] = []

    def decode(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        out, stats = self.layers[layer].decode(q[:, :, 0], k[:, :, 0], v[:, :, 0])
        self.stats.append(stats)
        return out.unsqueeze(2)

    def prefill(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, meta: AttentionMetadata
    ) -> Tensor:
        raise RuntimeError("the RetroInfer decode backend only decodes")


class GraphedRetroDecoder:
    """RetroInfer decode steps of `model` replayed from one CUDA graph (CUDA only).

    step(tokens, start_pos) == model(tokens [B, 1], AttentionMetadata.decode(start_pos),
    <backend calling each layer's decode()>, last_only=True) with the layers' fixed-width steps
    (`static_shapes=True`): logits [B, V] (a static buffer, overwritten by the next step) and
    each layer's StepStats. Steps that cannot be captured (a layer without an index, deferred
    misses, recorded selections, a source that is not capturable, a failed capture) run eagerly
    through each layer's decode().
    """

    def __init__(self, model: CausalLM, layers: Sequence[RetroInferLayer]) -> None:
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA model, got device={model.device}")
        if len(layers) != model.config.num_layers:
            raise ValueError(
                f"need one RetroInferLayer per model layer ({model.config.num_layers}), "
                f"got {len(layers)}"
            )
        self.model = model
        self.layers = list(layers)
        self.batch_size = self.layers[0].batch
        self.backend = FixedStepBackend(self.layers)
        self.eager = _DecodeBackend(self.layers)
        self.use_graph = all(getattr(x.source, "capturable", False) for x in self.layers)
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
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits = self.model(self.tokens, self.meta, self.backend, last_only=True)
                counts = torch.stack(self.backend.counts)  # [L, 7]
        except RuntimeError as err:  # capture unsupported here: stay correct, run eager
            log.warning("whole-step CUDA graph capture failed (%s); running eager", err)
            self.backend.undo_buffers = False
            self.use_graph = False
            return False
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
