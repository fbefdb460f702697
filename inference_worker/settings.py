"""WAVEKV_* environment settings of the inference side, read in one place with typed readers.

Every reader fails fast with a message that quotes the variable and its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "WAVEKV_"


class SettingsError(ValueError):
    """A WAVEKV_* variable holds a value that cannot be used."""


def _raw(name: str, env: Mapping[str, str]) -> str | None:
    value = env.get(PREFIX + name)
    return None if value is None or value.strip() == "" else value.strip()


def env_str(name: str, default: str, env: Mapping[str, str] = os.environ) -> str:
    value = _raw(name, env)
    return default if value is None else value


def env_int(name: str, default: int | None, env: Mapping[str, str] = os.environ) -> int | None:
    value = _raw(name, env)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float, env: Mapping[str, str] = os.environ) -> float:
    value = _raw(name, env)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name} must be a number, got {value!r}") from None


def env_path(name: str, default: Path, env: Mapping[str, str] = os.environ) -> Path:
    value = _raw(name, env)
    return default if value is None else Path(value).expanduser()


def default_cluster_dir() -> Path:
    return Path.home() / ".wavekv" / "cluster"


@dataclass(slots=True)
class ClusterSettings:
    """How `python -m inference_worker.cluster up` lays out the local cluster."""

    state_dir: Path = field(default_factory=default_cluster_dir)  # pids, ports, logs, token
    worker_nodes: int = 0  # extra `ray start --address` nodes beside the head
    num_cpus: int | None = None  # CPUs each Ray node advertises (None: Ray detects)
    num_gpus: int | None = None  # GPUs per worker node (head: 0 if worker nodes); None: detect
    object_store_bytes: int | None = None  # Ray object store per node (None: Ray default)
    store_capacity_bytes: int | None = (
        None  # --capacity-bytes (None: WAVEKV_CAPACITY_BYTES/default)
    )
    store_port: int = 0  # 0: the store picks a free port
    ray_port: int = 0  # GCS port; 0: a free port
    dashboard_port: int = 0  # dashboard + job server; 0: a free port
    startup_timeout_s: float = 120.0  # bound on each readiness wait
    shutdown_timeout_s: float = 30.0  # graceful stop before SIGKILL

    def __post_init__(self) -> None:
        if self.worker_nodes < 0:
            raise SettingsError(f"worker_nodes must be >= 0, got {self.worker_nodes}")
        for name in ("num_cpus", "num_gpus"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise SettingsError(f"{name} must be >= 0, got {value}")
        for name in ("object_store_bytes", "store_capacity_bytes"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SettingsError(f"{name} must be > 0, got {value}")
        for name in ("store_port", "ray_port", "dashboard_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise SettingsError(f"{name} must be in [0, 65535], got {value}")
        for name in ("startup_timeout_s", "shutdown_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise SettingsError(f"{name} must be > 0, got {value}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ClusterSettings:
        """Read WAVEKV_CLUSTER_* and port variables; unset ones keep the defaults.

        The store itself reads its own WAVEKV_* settings (e.g. WAVEKV_CAPACITY_BYTES) from the
        environment it inherits.
        """
        return cls(
            state_dir=env_path("CLUSTER_DIR", default_cluster_dir(), env),
            worker_nodes=env_int("CLUSTER_WORKER_NODES", 0, env) or 0,
            num_cpus=env_int("CLUSTER_NUM_CPUS", None, env),
            num_gpus=env_int("CLUSTER_NUM_GPUS", None, env),
            object_store_bytes=env_int("CLUSTER_OBJECT_STORE_BYTES", None, env),
            store_port=env_int("STORE_PORT", 0, env) or 0,
            ray_port=env_int("RAY_PORT", 0, env) or 0,
            dashboard_port=env_int("DASHBOARD_PORT", 0, env) or 0,
            startup_timeout_s=env_float("CLUSTER_STARTUP_TIMEOUT_S", 120.0, env),
            shutdown_timeout_s=env_float("CLUSTER_SHUTDOWN_TIMEOUT_S", 30.0, env),
        )
