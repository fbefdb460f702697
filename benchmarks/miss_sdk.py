"""What a RetroInfer layer asks of the store per decode step, done with the SDK alone (the
engine's store link does the same through these calls): used by `benchmarks.miss_path` and
`benchmarks.miss_profile`, so the store benchmarks measure the SDK and the data plane, not the
engine.

Three paths, one result: keys and values [B, Hkv, max_tokens, D] (zero padded) and offsets
[B, Hkv, n + 1] on the compute device, for cluster ids [B, Hkv, n] (distinct per row):
- "local": DescriptorCache (whole-head descriptors cached, ids resolved on the device, no RPC);
- "shm": one FetchDescriptors RPC + ArenaReader.gather_packed from the mapped arena;
- "grpc": one FetchClusters stream, packed on the host and copied to the device.
"""

from __future__ import annotations

import numpy as np
import torch

from client import ClientOptions, DescriptorCache, FetchRequest, KVStoreClient

MODES = ("local", "shm", "grpc")


class SdkMisses:
    def __init__(self, target: str, mode: str, head_dim: int, dtype: torch.dtype) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {MODES}")
        shm = "off" if mode == "grpc" else "require"
        options = ClientOptions(namespace="miss", timeout_s=600, shared_memory=shm)
        self.client = KVStoreClient(target, options)
        self.mode, self.head_dim, self.dtype = mode, head_dim, dtype
        self.arena = self.client.shared_arena() if mode != "grpc" else None
        self.cache = DescriptorCache(self.client, self.arena) if mode == "local" else None

    def fetch(
        self, layer: int, sequence_ids: list[str], cluster_ids: torch.Tensor, max_tokens: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, h, n = cluster_ids.shape
        if self.cache is not None:
            heads = [(sid, layer, j) for sid in sequence_ids for j in range(h)]
            got = self.cache.fetch(heads, cluster_ids.reshape(b * h, n), max_tokens)
            shape = (b, h, max_tokens, self.head_dim)
            return got.keys.view(shape), got.values.view(shape), got.offsets.view(b, h, n + 1)
        cpu = cluster_ids.cpu()
        reqs = [
            FetchRequest(sequence_ids[i], layer, j, cpu[i, j]) for i in range(b) for j in range(h)
        ]
        if self.arena is not None:
            return self._shm(reqs, b, h, n, max_tokens, cluster_ids.device)
        return self._stream(reqs, b, h, n, max_tokens, cluster_ids.device)

    def _shm(self, reqs, b: int, h: int, n: int, max_tokens: int, device):  # type: ignore[no-untyped-def]
        assert self.arena is not None
        batch = self.client.fetch_descriptors(reqs)
        keys, values = self.arena.gather_packed(
            batch, list(range(b * h)), b * h, max_tokens, device
        )
        self.arena.verify(batch)  # waits for the gather's reads, then checks generations
        self.client.done_with_lease(batch.lease_id)
        offsets = np.zeros((b * h, n + 1), np.int64)
        np.cumsum(batch.lens.reshape(b * h, n), axis=-1, out=offsets[:, 1:])
        shape = (b, h, max_tokens, self.head_dim)
        offsets_t = torch.from_numpy(offsets.reshape(b, h, n + 1)).to(device)
        return keys.view(shape), values.view(shape), offsets_t

    def _stream(self, reqs, b: int, h: int, n: int, max_tokens: int, device):  # type: ignore[no-untyped-def]
        keys = torch.zeros(b, h, max_tokens, self.head_dim, dtype=self.dtype)
        values = torch.zeros_like(keys)
        offsets = torch.zeros(b, h, n + 1, dtype=torch.int64)
        for k, got in enumerate(self.client.fetch_clusters(reqs)):
            i, j = divmod(k, h)
            m = got.keys.shape[0]
            keys[i, j, :m], values[i, j, :m] = got.keys, got.values
            offsets[i, j] = got.offsets
        return keys.to(device), values.to(device), offsets.to(device)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        self.client.close()
