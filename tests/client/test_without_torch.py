"""The SDK and the store without torch, Ray or transformers installed: numpy in, numpy out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    """As if these packages were not installed."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "ray", "transformers", "triton"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, Block())

import numpy as np
from client import (ClientOptions, ClusterSegment, FetchRequest, KVStoreClient, SearchQuery,
                    SequenceGeometry)
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings

rng = np.random.default_rng(0)
sizes = np.array([3, 1, 4])
offsets = np.concatenate([[0], np.cumsum(sizes)])
keys = rng.standard_normal((8, 16)).astype(np.float16)
values = rng.standard_normal((8, 16)).astype(np.float16)
bf16 = rng.integers(0, 1 << 16, (8, 16), dtype=np.uint16)  # bf16 travels as its bit pattern
with EmbeddedStore(ServerSettings(port=0, log_level="WARNING")) as store:
    with KVStoreClient(store.target, ClientOptions(namespace="np", shared_memory="auto")) as kv:
        kv.wait_ready(timeout_s=10)
        kv.create_sequence("s", SequenceGeometry(1, 2, 16, "float16"))
        centroids = rng.standard_normal((3, 16))  # float64 metadata: converted
        seg = ClusterSegment(0, 0, centroids, sizes, centroids, keys, values, offsets)
        assert kv.put_segments("s", [seg]) == [0]
        (hit,) = kv.search_clusters([SearchQuery("s", 0, 0, rng.standard_normal((2, 16)))], k=2)
        assert isinstance(hit.cluster_ids, np.ndarray) and hit.cluster_ids.dtype == np.int64
        (got,) = kv.fetch_clusters([FetchRequest("s", 0, 0, [2, 0])])
        assert isinstance(got.keys, np.ndarray) and got.keys.dtype == np.float16
        assert np.array_equal(got.keys, np.concatenate([keys[4:8], keys[0:3]]))
        assert got.offsets.tolist() == [0, 4, 7]
        kv.create_sequence("b", SequenceGeometry(1, 1, 16, "bfloat16"))
        seg = ClusterSegment(0, 0, centroids, sizes, centroids, bf16, bf16, offsets)
        kv.put_segments("b", [seg])
        (got,) = kv.fetch_clusters([FetchRequest("b", 0, 0, [0, 1, 2])])
        assert got.keys.dtype == np.uint16 and np.array_equal(got.keys, bf16)
assert "torch" not in sys.modules and "ray" not in sys.modules
print("ok")
'''


def test_sdk_and_store_work_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
