"""The product's direct path on CPU: a RetroInfer layer whose misses come straight from a real
store's shared-memory arena through GrpcStoreLink's cluster rows (the Triton step under
TRITON_INTERPRET=1: `python -m tests.inference_worker.engine.link_cases`), against the torch
reference fetching the same clusters from the same store. Also the check on CUDA (tests)."""

from __future__ import annotations

import torch

from client import ClientOptions, KVStoreClient, SequenceGeometry
from inference_worker.engine.grpc_link import GrpcStoreLink
from inference_worker.engine.store_link import TORCH_TO_STORE_DTYPE
from inference_worker.retroinfer import RetroInferConfig, RetroInferLayer, StepOptions
from inference_worker.retroinfer.kernels.availability import patch_interpreter_index
from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings

HQ, HKV, D = 8, 2, 16


def check_store_rows(device: str, dtype: torch.dtype, seed: int, steps: int = 6) -> None:
    """Slots joining a layer fed by a real store: the direct path (cluster rows from the
    arena, table in use) and the reference give the same outputs and statistics."""
    gen = torch.Generator().manual_seed(seed)
    prompts = {n: torch.randn(2, 1, HKV, length, D, generator=gen).to(device, dtype)
               for n, length in (("a", 1500), ("b", 1200))}  # fmt: skip
    inputs = [torch.randn(3, 2, HQ, D, generator=gen).to(device, dtype) for _ in range(steps)]
    config = RetroInferConfig(cache_ratio=0.05, update_tokens=32, update_clusters=4)
    settings = ServerSettings(port=0, log_format="text", log_level="WARNING")
    geometry = SequenceGeometry(1, HKV, D, TORCH_TO_STORE_DTYPE[dtype])
    runs = []
    with EmbeddedStore(settings) as server:
        for run, options in enumerate((StepOptions(kernels=False), StepOptions(kernels=True))):
            client = KVStoreClient(server.target, ClientOptions(namespace=f"rows-{run}"))
            link = GrpcStoreLink(client, "require")
            layer = RetroInferLayer(
                config, 0, HQ, HKV, D, link, [None, None], dtype=dtype, device=device,
                on_segment=link.upload, options=options,
            )  # fmt: skip
            link.open(["a", "b"], geometry)
            out = []
            for step, x in enumerate(inputs):
                if step in (0, 2):  # a joins slot 1 first, b slot 0 two steps later
                    name, slot = ("a", 1) if step == 0 else ("b", 0)
                    layer.admit([slot], [name], prompts[name][0], prompts[name][1])
                    link.flush()
                o, stats = layer.decode(x[0] * 2, x[1, :, :HKV], x[2, :, :HKV])
                held = [b for b, s in enumerate(layer.sequence_ids) if s is not None]
                out.append((o[held], stats))
            if options.kernels:
                assert layer.state.table_ok, "the step did not read the store's arena in place"
            runs.append(out)
            link.close()
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for step, ((o1, s1), (o2, s2)) in enumerate(zip(*runs, strict=True)):
        torch.testing.assert_close(o1.float(), o2.float(), atol=tol, rtol=10 * tol,
                                   msg=f"store rows, step {step}")  # fmt: skip
        d1, d2 = s1.as_dict(), s2.as_dict()
        d1.pop("exec_tokens"), d2.pop("exec_tokens")
        assert d1 == d2, (step, d1, d2)


if __name__ == "__main__":
    patch_interpreter_index()
    check_store_rows("cpu", torch.float32, seed=1)
    print("ok")
