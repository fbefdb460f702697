"""ClientOptions: everything about a client except its address, fixed at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from client.retry import RetryPolicy

SHM_MODES = ("off", "auto", "require")
OUTPUTS = ("auto", "torch", "numpy")


@dataclass(slots=True, frozen=True)
class ClientOptions:
    namespace: str = "default"  # tenant: every call names it
    token: str | None = None  # sent as `authorization: Bearer <token>`
    tls_root_cert: bytes | str | Path | None = None  # PEM roots (path or bytes): TLS on
    tls: bool | None = None  # TLS with system roots when True (None: TLS iff tls_root_cert)
    tls_server_name: str | None = None  # name checked against the certificate
    timeout_s: float = 30.0  # deadline of one call, retries and waiting for the store included
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    put_chunk_bytes: int = 1 << 20  # SegmentData size of put_segments
    shared_memory: str = "off"  # off | auto | require: fetch from the same-host arena
    lease_ttl_s: float = 10.0  # same-host read leases asked for
    renew_sequences: bool = True  # keep sequences this client created alive (store TTL)
    output: str = "auto"  # torch tensors if torch is installed, else numpy ("torch"/"numpy")

    def __post_init__(self) -> None:
        if not self.namespace:
            raise ValueError("namespace is empty")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s={self.timeout_s} must be > 0")
        if self.put_chunk_bytes < 1024:
            raise ValueError(f"put_chunk_bytes={self.put_chunk_bytes} must be >= 1024")
        if self.shared_memory not in SHM_MODES:
            raise ValueError(f"shared_memory={self.shared_memory!r} is not one of {SHM_MODES}")
        if not self.lease_ttl_s > 0:
            raise ValueError(f"lease_ttl_s={self.lease_ttl_s} must be > 0")
        if self.output not in OUTPUTS:
            raise ValueError(f"output={self.output!r} is not one of {OUTPUTS}")
