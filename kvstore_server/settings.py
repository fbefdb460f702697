"""Server settings: one frozen dataclass read from WAVEKV_* environment variables; flags override.

Every value arrives as a string (environment or command line) and is parsed here, so both
sources accept the same forms: byte sizes as `1073741824`, `16GiB`, `512MiB`, `16G` (binary),
`2GB` (decimal); durations in seconds. A bad value raises SettingsError, one line that names the
variable or flag and quotes the value.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from kvstore_server.memory import default_capacity_bytes

ENV_PREFIX = "WAVEKV_"
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SHM_MODES = ("auto", "off", "require")
FSYNC_POLICIES = ("always", "everysec", "no")
BYTE_FIELDS = frozenset(
    {
        "capacity_bytes",
        "max_message_bytes",
        "fetch_chunk_bytes",
        "max_fetch_bytes",
        "shm_slab_bytes",
    }
)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*$")


class SettingsError(ValueError):
    """A setting's value is malformed or out of range (one line, naming it)."""


def parse_bytes(raw: str) -> int:
    """'16GiB' -> 17179869184. Units: B; K/M/G/T and KiB..TiB binary; KB..TB decimal."""
    m = _SIZE_RE.match(raw)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS:
        raise ValueError(f"{raw!r} is not a byte size (e.g. 1048576, 512MiB, 16GiB, 2GB)")
    value = float(m.group(1)) * _UNITS[unit]
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{raw!r} is not a whole number of bytes")
    return int(value)


@dataclass(slots=True, frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"  # interface of the gRPC port
    port: int = 50051  # 0 picks a free port (logged and written to ready_file)
    # byte budget for K/V and metadata, in-flight puts included; 0 = unlimited
    capacity_bytes: int = field(default_factory=default_capacity_bytes)
    auth_token_file: str | None = None  # lines `TOKEN [NAMESPACE ...]` (kvstore_server.auth)
    tls_cert: str | None = None  # PEM certificate chain; TLS when set together with tls_key
    tls_key: str | None = None  # PEM private key
    metrics_port: int | None = None  # Prometheus endpoint port (0 = free port); None = off
    metrics_host: str = "127.0.0.1"  # interface of the metrics endpoint (loopback unless set)
    ready_file: str | None = None  # JSON {"port", ...} written once serving
    max_message_bytes: int = 64 << 20  # gRPC max send/receive message size
    fetch_chunk_bytes: int = 1 << 20  # FetchClusters payload chunk size
    max_fetch_bytes: int = 256 << 20  # largest FetchClusters response (payload bytes)
    max_put_streams: int = 64  # PutSegments streams open at once
    stream_idle_s: float = 30.0  # a PutSegments stream silent this long is dropped
    max_concurrent_rpcs: int = 1024  # more at once are refused with RESOURCE_EXHAUSTED
    max_namespaces: int = 4096  # namespaces with sequences or an arena
    sequence_ttl_s: float = 600.0  # sequences untouched this long are dropped; 0 = never
    shutdown_grace_s: float = 5.0  # in-flight RPCs get this long after SIGTERM
    shared_memory: str = "auto"  # auto | off | require: K/V in shared-memory slabs
    shm_dir: str | None = None  # slab directory; None: /dev/shm, or DATA_DIR/slabs with data_dir
    shm_slab_bytes: int = 256 << 20  # slab file size (sparse; larger extents get their own slab)
    max_lease_ttl_s: float = 60.0  # longest lease a same-host reader may hold
    data_dir: str | None = None  # journal (+ slabs unless shm_dir): warm restart after a crash
    fsync: str = "everysec"  # journal fsync policy: always | everysec | no
    log_level: str = "INFO"
    log_format: str = "json"

    def __post_init__(self) -> None:
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise SettingsError(f"{name}={value} out of range [0, 65535]")
        if self.capacity_bytes < 0:
            raise SettingsError(f"capacity_bytes={self.capacity_bytes} must be >= 0")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise SettingsError(
                f"tls_cert={self.tls_cert!r} and tls_key={self.tls_key!r}: give both or neither"
            )
        _check_range("max_message_bytes", self.max_message_bytes, 1 << 20, 1 << 31)
        _check_range("fetch_chunk_bytes", self.fetch_chunk_bytes, 4096, self.max_message_bytes // 2)
        _check_range("max_fetch_bytes", self.max_fetch_bytes, 1 << 20, 1 << 40)
        _check_range("max_put_streams", self.max_put_streams, 1, 1 << 16)
        _check_range("max_concurrent_rpcs", self.max_concurrent_rpcs, 8, 1 << 20)
        _check_range("max_namespaces", self.max_namespaces, 1, 1 << 24)
        _check_range("shm_slab_bytes", self.shm_slab_bytes, 2 << 20, 1 << 40)
        _check_choice("shared_memory", self.shared_memory, SHM_MODES)
        _check_choice("fsync", self.fsync, FSYNC_POLICIES)
        _check_choice("log_level", self.log_level.upper(), LOG_LEVELS)
        _check_choice("log_format", self.log_format, LOG_FORMATS)
        for name in ("stream_idle_s", "max_lease_ttl_s"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name}={getattr(self, name)} must be > 0")
        for name in ("sequence_ttl_s", "shutdown_grace_s"):
            if not getattr(self, name) >= 0:
                raise SettingsError(f"{name}={getattr(self, name)} must be >= 0")

    @property
    def slab_dir(self) -> str:
        """Where slab files live: --shm-dir, else DATA_DIR/slabs, else /dev/shm."""
        if self.shm_dir is not None:
            return self.shm_dir
        if self.data_dir is not None:
            return str(Path(self.data_dir) / "slabs")
        return "/dev/shm"

    @classmethod
    def from_sources(
        cls, environ: Mapping[str, str] | None = None, flags: Mapping[str, str | None] = {}
    ) -> ServerSettings:
        """WAVEKV_<FIELD> variables, then flags (strings, None = not given) on top."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw:
                values[f.name] = _parse(f.name, raw, f"{ENV_PREFIX}{f.name.upper()}")
            flag = flags.get(f.name)
            if flag is not None:
                values[f.name] = _parse(f.name, flag, "--" + f.name.replace("_", "-"))
        return cls(**values)  # type: ignore[arg-type]


_INT_FIELDS = frozenset(
    {"port", "metrics_port", "max_put_streams", "max_concurrent_rpcs", "max_namespaces"}
)
_FLOAT_FIELDS = frozenset(
    {"stream_idle_s", "sequence_ttl_s", "shutdown_grace_s", "max_lease_ttl_s"}
)


def _parse(name: str, raw: str, source: str) -> object:
    try:
        if name in BYTE_FIELDS:
            return parse_bytes(raw)
        if name in _INT_FIELDS:
            return int(raw)
        if name in _FLOAT_FIELDS:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError(f"{raw!r} is not finite")
            return value
    except ValueError:
        kind = "byte size" if name in BYTE_FIELDS else "number"
        raise SettingsError(f"{source}={raw!r} is not a valid {kind}") from None
    return raw


def _check_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={value} out of range [{lo}, {hi}]")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(choices)}")
