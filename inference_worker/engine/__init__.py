"""Generation engine: model + attention backend (full or RetroInfer) + store link."""

from inference_worker.engine.config import EngineConfig
from inference_worker.engine.engine import GenerationEngine
from inference_worker.engine.grpc_link import GrpcStoreLink, connect_store
from inference_worker.engine.sequence import RequestOutput
from inference_worker.engine.store_link import InProcessStoreLink, StoreLink, StoreRestartedError
from inference_worker.engine.types import GenerationRequest, GenerationResult

__all__ = [
    "EngineConfig",
    "GenerationEngine",
    "GenerationRequest",
    "GenerationResult",
    "GrpcStoreLink",
    "InProcessStoreLink",
    "RequestOutput",
    "StoreLink",
    "StoreRestartedError",
    "connect_store",
]
