"""Random clustered segments, plain reference implementations and a store process for the store
and SDK tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import torch

from client import ClusterSegment

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def make_segment(
    rng: np.random.Generator,
    layer: int,
    kv_head: int,
    num_clusters: int,
    head_dim: int,
    dtype: str,
    max_size: int = 12,
    empty_every: int = 0,
) -> ClusterSegment:
    """Random cluster-major segment; every `empty_every`-th cluster is empty when > 0."""
    sizes = rng.integers(1, max_size + 1, num_clusters)  # [C]
    if empty_every:
        sizes[::empty_every] = 0
    offsets = np.zeros(num_clusters + 1, np.int64)  # [C + 1]
    np.cumsum(sizes, out=offsets[1:])
    n = int(offsets[-1])
    keys = torch.randn(
        n, head_dim, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    )
    values = torch.randn(
        n, head_dim, generator=torch.Generator().manual_seed(int(rng.integers(1 << 30)))
    )
    return ClusterSegment(
        layer=layer,
        kv_head=kv_head,
        centroids=rng.standard_normal((num_clusters, head_dim), dtype=np.float32),
        sizes=sizes,
        value_sums=rng.standard_normal((num_clusters, head_dim), dtype=np.float32),
        keys=keys.to(TORCH_DTYPES[dtype]),
        values=values.to(TORCH_DTYPES[dtype]),
        offsets=offsets,
    )


def unique_ids(rng: np.random.Generator, high: int, shape: tuple[int, ...]) -> np.ndarray:
    """Cluster ids in [0, high), distinct along the last axis (the store refuses repeats)."""
    *lead, n = shape
    return np.argsort(rng.random((*lead, high)), axis=-1)[..., :n].astype(np.int64)


def reference_fetch(
    segments: list[ClusterSegment], cluster_ids: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain per-cluster slicing over a (layer, kv_head)'s appended segments, in id order."""
    keys, values = [], []
    for cid in cluster_ids:
        for seg in segments:
            c = len(seg.sizes)
            if cid < c:
                a, b = int(seg.offsets[cid]), int(seg.offsets[cid + 1])
                keys.append(seg.keys[a:b])
                values.append(seg.values[a:b])
                break
            cid -= c
    return torch.cat(keys), torch.cat(values)


def reference_gqa_scores(
    centroids: np.ndarray, sizes: np.ndarray, queries: np.ndarray
) -> np.ndarray:
    """Brute force in float64: sum over query heads of softmax(q . c / sqrt(D)); empty -> -inf."""
    logits = (
        queries.astype(np.float64) @ centroids.astype(np.float64).T / np.sqrt(centroids.shape[1])
    )
    logits[:, sizes == 0] = -np.inf
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    scores = p.sum(axis=0)
    scores[sizes == 0] = -np.inf
    return scores


class StoreProcess:
    """`python -m kvstore_server` on 127.0.0.1 as its own process (killable, restartable on the
    same port). Readiness: its JSON log's "serving" line (a blocking read, no sleeping)."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, launcher: list[str] | None = None
    ) -> None:
        """`launcher`: a command that runs `python -m kvstore_server "$@"` with the arguments
        appended (e.g. inside `unshare`); default: this interpreter directly."""
        self.args = list(args)
        self.env = env
        self.launcher = launcher or [sys.executable, "-m", "kvstore_server"]
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.serving: dict = {}
        self.log: list[dict] = []
        self._logged = threading.Condition()

    def start(self, *extra: str) -> StoreProcess:
        cmd = [*self.launcher, "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--log-level", "INFO", *self.args, *extra]
        env = {**os.environ, **(self.env or {})}
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            doc = json.loads(line)
            self.log.append(doc)
            if doc.get("msg") == "serving":
                self.serving = doc
                break
        else:
            raise AssertionError(f"store exited before serving: rc={self.proc.wait()} {self.log}")
        self.port = int(self.serving["port"])
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        return self

    def _drain(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with contextlib.suppress(ValueError), self._logged:
                self.log.append(json.loads(line))
                self._logged.notify_all()

    def wait_for_log(self, msg: str, timeout_s: float = 60.0) -> dict:
        """The first log record `msg` logged from now on (woken by the log reader)."""
        with self._logged:
            start = len(self.log)
            found = self._logged.wait_for(
                lambda: any(d.get("msg") == msg for d in self.log[start:]), timeout_s
            )
            assert found, f"no {msg!r} in the store's log within {timeout_s} s"
            return next(d for d in self.log[start:] if d.get("msg") == msg)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM: a graceful shutdown; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def logged(self, msg: str) -> list[dict]:
        return [d for d in self.log if d.get("msg") == msg]
