"""Server settings: one dataclass read from WAVEKV_* environment variables; CLI flags override."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "WAVEKV_"
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SHM_MODES = ("auto", "off", "require")


@dataclass(slots=True)
class ServerSettings:
    host: str = "127.0.0.1"  # interface to bind
    port: int = 50051  # 0 picks a free port (logged and written to ready_file)
    capacity_bytes: int = 0  # byte budget for K/V and metadata; 0 = unlimited
    auth_token_file: str | None = None  # file whose stripped content is the bearer token
    tls_cert: str | None = None  # PEM certificate chain; TLS when set together with tls_key
    tls_key: str | None = None  # PEM private key
    metrics_port: int | None = None  # Prometheus endpoint port (0 = free port); None = off
    ready_file: str | None = None  # JSON {"port", ...} written once serving
    max_message_bytes: int = 64 << 20  # gRPC max send/receive message size
    fetch_chunk_bytes: int = 1 << 20  # FetchClusters payload chunk size
    shutdown_grace_s: float = 5.0  # in-flight RPCs get this long after SIGTERM
    shared_memory: str = "auto"  # auto | off | require: K/V in shared-memory slabs
    shm_dir: str = "/dev/shm"  # where slab files live
    shm_slab_bytes: int = 256 << 20  # slab file size (larger allocations get their own slab)
    max_lease_ttl_s: float = 60.0  # longest lease a same-host reader may hold
    log_level: str = "INFO"
    log_format: str = "json"

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port={self.port} out of range [0, 65535]")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port={self.metrics_port} out of range [0, 65535]")
        if self.capacity_bytes < 0:
            raise ValueError(f"capacity_bytes={self.capacity_bytes} must be >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(
                f"tls_cert={self.tls_cert!r} and tls_key={self.tls_key!r}: give both or neither"
            )
        if not 1 << 20 <= self.max_message_bytes <= 1 << 31:
            raise ValueError(
                f"max_message_bytes={self.max_message_bytes} out of range [1 MiB, 2 GiB]"
            )
        if not 4096 <= self.fetch_chunk_bytes <= self.max_message_bytes // 2:
            raise ValueError(
                f"fetch_chunk_bytes={self.fetch_chunk_bytes} out of range [4096, "
                f"max_message_bytes/2="
                f"{self.max_message_bytes // 2}]"
            )
        if self.shared_memory not in SHM_MODES:
            raise ValueError(f"shared_memory={self.shared_memory!r} is not one of {SHM_MODES}")
        if self.shm_slab_bytes < 2 << 20:
            raise ValueError(f"shm_slab_bytes={self.shm_slab_bytes} must be >= 2 MiB")
        if not self.max_lease_ttl_s > 0:
            raise ValueError(f"max_lease_ttl_s={self.max_lease_ttl_s} must be > 0")
        if self.shutdown_grace_s < 0:
            raise ValueError(f"shutdown_grace_s={self.shutdown_grace_s} must be >= 0")
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(f"log_level={self.log_level!r} is not one of {LOG_LEVELS}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format={self.log_format!r} is not one of {LOG_FORMATS}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> ServerSettings:
        """WAVEKV_<FIELD> variables, then non-None overrides (CLI flags) on top."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, raw, cls.__dataclass_fields__[f.name].default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _parse(name: str, raw: str, default: Any) -> Any:
    kind = type(default) if default is not None else (int if name == "metrics_port" else str)
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}"
        ) from None
