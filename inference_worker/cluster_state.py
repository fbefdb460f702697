"""What a running local cluster is: its processes, addresses and token, saved as JSON.

`wavekv cluster up` writes it into the state dir; `status`, `env`, `down`, `wavekv job submit`
and the tests read it back from any process.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inference_worker.cluster_procs import ProcessId

STATE_FILE = "cluster.json"


@dataclass(slots=True)
class Component:
    """One started process: what it is, its pinned id and where its output goes."""

    name: str  # "store", "ray-head", "ray-worker-0", "serve"
    pid: int
    start_ticks: int
    log: str

    @property
    def process(self) -> ProcessId:
        return ProcessId(self.pid, self.start_ticks)


@dataclass(slots=True)
class ClusterState:
    """Everything `status`, `env` and `down` need, saved as JSON in the state dir."""

    state_dir: str
    ray_temp_dir: str  # short /tmp path: Ray's unix sockets must fit in 107 bytes
    auth_token_path: str
    store_address: str = ""
    store_metrics_url: str = ""  # the store's Prometheus endpoint
    gcs_address: str = ""
    dashboard_url: str = ""  # dashboard and job server
    serve_url: str = ""  # `wavekv serve` (OpenAI API) when started with --serve
    expected_nodes: int = 1
    components: list[Component] = field(default_factory=list)

    def save(self) -> None:
        path = Path(self.state_dir) / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text())
        raw["components"] = [Component(**c) for c in raw["components"]]
        return cls(**raw)

    def leaders(self) -> list[ProcessId]:
        return [c.process for c in self.components]

    def token(self) -> str:
        return Path(self.auth_token_path).read_text().strip()

    def client_env(self) -> dict[str, str]:
        """Variables a client needs: `ray job submit` (address + token), the store address and,
        when the cluster serves, the OpenAI base URL (read by the `openai` client)."""
        env = {
            "RAY_ADDRESS": self.dashboard_url,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": self.auth_token_path,
            "WAVEKV_STORE_ADDRESS": self.store_address,
        }
        if self.serve_url:
            env["OPENAI_BASE_URL"] = f"{self.serve_url}/v1"
        return env
