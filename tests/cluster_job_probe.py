"""A short Ray job for tests/inference_worker/test_cluster.py: proves `ray job submit` reaches
every node.

    ray job submit --address http://127.0.0.1:PORT -- \
        python tests/scripts/cluster_job_probe.py --store HOST:PORT --output out.json --namespace NS

On every alive Ray node it runs one task pinned to that node; the task creates a sequence in the
real store through the SDK, reads it back, deletes it and reports what it saw. The driver writes
the reports as JSON. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from client import KVStoreClient, SequenceGeometry

log = logging.getLogger("cluster_job_probe")


@ray.remote(num_cpus=1)
def touch_store(store: str, namespace: str, sequence_id: str) -> dict[str, Any]:
    geometry = SequenceGeometry(num_layers=2, num_kv_heads=3, head_dim=64, dtype="float16")
    with KVStoreClient(store, namespace=namespace) as client:
        created = client.create_sequence(sequence_id, geometry)
        listed = [info.sequence_id for info in client.list_sequences()]
        client.delete_sequence(sequence_id)
        after = [info.sequence_id for info in client.list_sequences()]
    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
        "sequence_id": sequence_id,
        "incarnation_id": created.incarnation_id,
        "listed_while_alive": sequence_id in listed,
        "listed_after_delete": sequence_id in after,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--namespace", default="cluster-probe")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    ray.init()  # the job supervisor sets RAY_ADDRESS to this cluster
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    log.info("alive nodes: %s", nodes)
    tasks = [
        touch_store.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)
        ).remote(args.store, args.namespace, f"probe-{index}")
        for index, node_id in enumerate(nodes)
    ]
    report = {"nodes": nodes, "tasks": ray.get(tasks, timeout=120)}
    args.output.write_text(json.dumps(report, indent=2))
    log.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
