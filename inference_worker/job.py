"""Batch generation job: JSONL prompts in, JSONL completions out, spread over Ray actors.

Usable directly or through Ray job submission:

    python -m inference_worker.job --store HOST:PORT --input in.jsonl --output out.jsonl
    ray job submit --address http://127.0.0.1:8265 -- python -m inference_worker.job ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from inference_worker.settings import env_str

log = logging.getLogger("inference_worker.job")


class JobError(RuntimeError):
    """A failure the job reports with a clear message and a non-zero exit code."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m inference_worker.job",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--store",
        default=env_str("STORE_ADDRESS", "") or None,
        help="kvstore_server HOST:PORT (default $WAVEKV_STORE_ADDRESS; required for retroinfer)",
    )
    p.add_argument("--input", required=True, type=Path, help="JSONL: {id, prompt, max_new_tokens?}")
    p.add_argument("--output", required=True, type=Path, help="JSONL: {id, text, stats}")
    p.add_argument("--workers", type=int, default=1, help="number of InferenceWorker actors")
    p.add_argument("--attention", choices=["retroinfer", "full"], default="retroinfer")
    p.add_argument(
        "--model", default=None, help="GGUF file or safetensors folder (default: SmolLM2)"
    )
    p.add_argument("--retrieval-budget", type=float, default=None)
    p.add_argument("--estimation-budget", type=float, default=None)
    p.add_argument(
        "--min-retrieval-clusters",
        type=int,
        default=None,
        help="floor on retrieved clusters per head (default 64; 0 = the paper's pure fraction)",
    )
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--namespace", default="wavekv", help="store namespace (tenant)")
    p.add_argument("--token-file", type=Path, default=None, help="store auth token file")
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster to join (default: $RAY_ADDRESS, else a local loopback Ray)",
    )
    p.add_argument(
        "--store-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the store to answer its health check",
    )
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers must be >= 1, got {args.workers}")
    if args.max_new_tokens < 1:
        p.error(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.attention == "retroinfer" and not args.store:
        p.error("--store HOST:PORT is required with --attention retroinfer")
    return args


def read_records(path: Path) -> list[dict[str, Any]]:
    """Parse and validate the input JSONL; errors name the line."""
    from inference_worker.engine import GenerationRequest

    if not path.is_file():
        raise JobError(f"input file {str(path)!r} does not exist")
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            GenerationRequest.from_dict(record)
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise JobError(f"{path}:{lineno}: bad input record: {exc}") from exc
        records.append(record)
    if not records:
        raise JobError(f"input file {str(path)!r} holds no records")
    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        raise JobError(f"input file {str(path)!r} repeats ids")
    return records


def check_store(address: str, token: str | None, timeout_s: float) -> None:
    """Fail fast with a clear message if the store does not answer."""
    from client import KVStoreClient

    try:
        with KVStoreClient(address, token=token, timeout_s=timeout_s) as store:
            store.get_stats()
    except Exception as exc:
        raise JobError(f"KV store at {address} is unreachable or refused us: {exc}") from exc


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    retro: dict[str, Any] = {}
    if args.retrieval_budget is not None:
        retro["retrieval_budget"] = args.retrieval_budget
    if args.estimation_budget is not None:
        retro["estimation_budget"] = args.estimation_budget
    if args.min_retrieval_clusters is not None:
        retro["min_retrieval_clusters"] = args.min_retrieval_clusters
    if retro:
        from inference_worker.retroinfer import RetroInferConfig

        try:
            RetroInferConfig(**retro)  # validate budgets before any actor starts
        except ValueError as exc:
            raise JobError(f"bad RetroInfer settings: {exc}") from exc
    return {"attention": args.attention, "max_new_tokens": args.max_new_tokens, "retro": retro}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    from inference_worker.actor import WorkerOptions
    from inference_worker.driver import JobDriver

    try:
        records = read_records(args.input)
        run = run_config(args)
        token = args.token_file.read_text().strip() if args.token_file else None
        if args.store:
            check_store(args.store, token, args.store_timeout)
        options = WorkerOptions(
            model_path=args.model, store_address=args.store, namespace=args.namespace, token=token
        )
        address = args.ray_address or os.environ.get("RAY_ADDRESS")
        with JobDriver(options, workers=args.workers, ray_address=address) as driver:
            outcome = driver.run(records, run)
    except JobError as exc:
        log.error("%s", exc)
        return 2
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as f:
        for result in outcome.results:
            f.write(json.dumps(result) + "\n")
    for rid, err in outcome.errors.items():
        log.error("request %s failed: %s", rid, err)
    log.info(
        "wrote %d results to %s (%d failed)", len(outcome.results), args.output, len(outcome.errors)
    )
    return 1 if outcome.errors else 0


if __name__ == "__main__":
    sys.exit(main())
