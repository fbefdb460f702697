"""`ray start --address ... --block` for an extra Ray node on this host, kept on loopback.

    python -m inference_worker.cluster_ray_node start --address=127.0.0.1:PORT --block \
        --node-ip-address=127.0.0.1 ...

The team runs Ray with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which is what makes the raylet, the
dashboard agent and the runtime-env agent bind to 127.0.0.1. Ray's CLI ties two more things to the
same switch: it refuses `ray start --address` outright, and with the switch on it rewrites
127.0.0.1 (the GCS address and --node-ip-address) to the host's public IP, so the node then
listens on every interface. This launcher runs Ray's own CLI with the switch left at 0 in the
environment (every Ray process it starts inherits that) and lifts only those two CLI behaviours.
"""

from __future__ import annotations

import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as services
from ray.scripts.scripts import main as ray_cli


def _keep_host(host: str) -> str:
    return host


def main() -> int:
    ray_constants.ENABLE_RAY_CLUSTER = True
    services.resolve_ip_for_localhost = _keep_host
    result = ray_cli()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
