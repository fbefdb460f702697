"""WAVEKV_* settings of the inference side, read in one place through pydantic-settings.

One frozen settings class per component (the local cluster, the job, the OpenAI server, the
worker metrics endpoint). Each field names its environment variable; command-line flags are
passed as keyword arguments and win over the environment. Byte sizes accept units (`16GiB`,
`512MB`) as well as plain byte counts. `load` turns any invalid value, from a flag or from the
environment, into one `SettingsError` line that names the flag or variable and quotes the value;
the CLIs print it as a usage error (exit code 2), never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar

from pydantic import ByteSize, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "WAVEKV_"
USAGE_EXIT_CODE = 2


class SettingsError(ValueError):
    """A flag or WAVEKV_* variable holds a value that cannot be used (one-line message)."""


def _env(name: str, default: Any = None, **constraints: Any) -> Any:
    """A field read from WAVEKV_<name>; `default=...` makes it required."""
    return Field(default=default, validation_alias=PREFIX + name, **constraints)


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=PREFIX,  # every field also names its variable explicitly
        frozen=True,
        extra="ignore",  # the store's own WAVEKV_* variables share the prefix
        validate_by_name=True,  # flags are passed by field name
        validate_by_alias=True,  # the environment by variable name
        env_ignore_empty=True,
    )


def default_cluster_dir() -> Path:
    return Path.home() / ".wavekv" / "cluster"


class ClusterSettings(_Settings):
    """How `wavekv cluster up` lays out the local cluster on 127.0.0.1."""

    state_dir: Path = Field(
        default_factory=default_cluster_dir, validation_alias=PREFIX + "CLUSTER_DIR"
    )  # pids, ports, logs, token
    worker_nodes: int = _env("CLUSTER_WORKER_NODES", 0, ge=0)  # `ray start` nodes beside the head
    num_cpus: int | None = _env("CLUSTER_NUM_CPUS", None, ge=0)  # per Ray node; None: detected
    num_gpus: int | None = _env("CLUSTER_NUM_GPUS", None, ge=0)  # per worker node; None: detected
    object_store_bytes: ByteSize | None = _env("CLUSTER_OBJECT_STORE_BYTES", None, gt=0)
    # The store's own variable: passed on as --capacity-bytes (None: the store's default).
    store_capacity_bytes: ByteSize | None = _env("CAPACITY_BYTES", None, gt=0)
    store_port: int = _env("STORE_PORT", 0, ge=0, le=65535)  # 0: a free port
    ray_port: int = _env("RAY_PORT", 0, ge=0, le=65535)  # GCS port; 0: a free port
    dashboard_port: int = _env("DASHBOARD_PORT", 0, ge=0, le=65535)  # job server; 0: free
    serve: bool = _env("CLUSTER_SERVE", False)  # also deploy `wavekv serve` on the cluster
    serve_port: int = _env("CLUSTER_SERVE_PORT", 0, ge=0, le=65535)  # its HTTP port; 0: free
    startup_timeout_s: float = _env("CLUSTER_STARTUP_TIMEOUT_S", 120.0, gt=0)  # each wait
    shutdown_timeout_s: float = _env("CLUSTER_SHUTDOWN_TIMEOUT_S", 30.0, gt=0)  # then SIGKILL

    @field_validator("state_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()


Attention = Literal["retroinfer", "full"]


class JobSettings(_Settings):
    """`wavekv job run` / `python -m inference_worker.job`: JSONL in, JSONL out."""

    input: Path = _env("JOB_INPUT", ...)  # JSONL {id, prompt, max_new_tokens?}
    output: Path = _env("JOB_OUTPUT", ...)  # JSONL {id, text, token_ids, stats}
    store: str | None = _env("STORE_ADDRESS", None)  # HOST:PORT; required for retroinfer
    workers: int = _env("JOB_WORKERS", 1, ge=1)  # InferenceWorker actors
    attention: Attention = _env("ATTENTION", "retroinfer")
    model: str | None = _env("MODEL", None)  # GGUF file or safetensors folder; None: SmolLM2
    retrieval_budget: float | None = _env("RETRIEVAL_BUDGET", None)
    estimation_budget: float | None = _env("ESTIMATION_BUDGET", None)
    min_retrieval_clusters: int | None = _env("MIN_RETRIEVAL_CLUSTERS", None)
    max_new_tokens: int = _env("MAX_NEW_TOKENS", 32, ge=1)  # default per record
    batch_size: int = _env("JOB_BATCH_SIZE", 8, ge=1)  # requests per actor call
    namespace: str = _env("NAMESPACE", "wavekv", min_length=1)  # store tenant
    token_file: Path | None = _env("STORE_TOKEN_FILE", None)  # store bearer token
    ray_address: str | None = Field(default=None, validation_alias="RAY_ADDRESS")
    store_timeout_s: float = _env("STORE_TIMEOUT_S", 10.0, gt=0)  # store health wait
    placement_timeout_s: float = _env("JOB_PLACEMENT_TIMEOUT_S", 120.0, gt=0)  # actors up


class ServeSettings(_Settings):
    """`wavekv serve`: the OpenAI-compatible server on Ray Serve."""

    host: str = _env("SERVE_HOST", "127.0.0.1")  # HTTP bind address of the Serve proxy
    port: int = _env("SERVE_PORT", 8000, ge=0, le=65535)  # 0: a free port
    replicas: int = _env("SERVE_REPLICAS", 1, ge=1)  # engine replicas (one GPU each with CUDA)
    model: str | None = _env("MODEL", None)  # GGUF file or safetensors folder; None: SmolLM2
    served_model_name: str | None = _env("SERVED_MODEL_NAME", None)  # None: the file's name
    store: str | None = _env("STORE_ADDRESS", None)  # HOST:PORT; None: in-process store
    namespace: str = _env("NAMESPACE", "wavekv", min_length=1)
    token_file: Path | None = _env("STORE_TOKEN_FILE", None)
    attention: Attention = _env("ATTENTION", "retroinfer")
    max_batch_size: int = _env("SERVE_MAX_BATCH_SIZE", 8, ge=1)  # sequences decoded together
    max_ongoing_requests: int = _env("SERVE_MAX_ONGOING_REQUESTS", 64, ge=1)  # per replica
    default_max_tokens: int = _env("SERVE_DEFAULT_MAX_TOKENS", 256, ge=1)  # when unset
    ray_address: str | None = Field(default=None, validation_alias="RAY_ADDRESS")
    app_name: str = _env("SERVE_APP_NAME", "wavekv", min_length=1)


class WorkerMetricsSettings(_Settings):
    """Where an engine-holding worker (job actor, serve replica) serves `/metrics`."""

    host: str = _env("WORKER_METRICS_HOST", "127.0.0.1")  # bind address
    port: int = _env("WORKER_METRICS_PORT", 0, ge=0, le=65535)  # 0: a free port


S = TypeVar("S", bound=_Settings)


def load(cls: type[S], flags: Mapping[str, Any] | None = None) -> S:
    """Settings from the environment with the non-None `flags` (by field name) on top."""
    given = {k: v for k, v in (flags or {}).items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as err:
        raise SettingsError(describe(cls, err, given)) from None


def describe(cls: type[_Settings], err: ValidationError, given: Mapping[str, Any]) -> str:
    """One line: the flag or variable, the value it held, and what is wrong with it."""
    first = err.errors()[0]
    loc = str(first["loc"][0]) if first["loc"] else ""
    aliases = {f.validation_alias: name for name, f in cls.model_fields.items()}
    name = aliases.get(loc, loc)
    variable = cls.model_fields[name].validation_alias if name in cls.model_fields else None
    more = len(err.errors()) - 1
    tail = f" (and {more} more)" if more else ""
    if first["type"] == "missing":
        return f"{flag_name(name)} is required (or set {variable}){tail}"
    source = flag_name(name) if name in given else str(variable or loc)
    value = first.get("input")
    what = f"{source}={value!r}" if source and not isinstance(value, dict) else source
    return f"{what}: {first['msg']}{tail}" if what else f"{first['msg']}{tail}"


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


class CliParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT_CODE, f"{self.prog}: error: {message} (see --help)\n")


def usage_error(prog: str, err: SettingsError) -> int:
    """Print a settings error as a one-line usage error; returns the exit code."""
    print(f"{prog}: error: {err}", file=sys.stderr)
    return USAGE_EXIT_CODE
