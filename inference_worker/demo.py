"""The main job on embedded defaults: a local WaveKV cluster answering passkey prompts.

    python -m inference_worker.demo

Brings up the local cluster on 127.0.0.1 (KV store + Ray head), submits two Ray jobs of
`python -m inference_worker.job` over passkey-retrieval prompts of about 2K, 4K and 7K tokens
(full attention, then RetroInfer with the clustered KV in the store), prints a comparison table
and tears the cluster down.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from inference_worker.cluster import ClusterState, down, up
from inference_worker.eval.prompt import Sample
from inference_worker.eval.scoring import score
from inference_worker.eval.tasks import make_sample
from inference_worker.eval.tokens import PieceEncoder
from inference_worker.model import Tokenizer, default_model_path
from inference_worker.settings import ClusterSettings

log = logging.getLogger("inference_worker.demo")

LENGTHS = (2048, 4096, 7168)


def passkey_samples(lengths: tuple[int, ...], seed: int) -> list[Sample]:
    enc = PieceEncoder(Tokenizer.from_path(default_model_path()))
    return [make_sample("passkey", enc, n, 0, seed, depths=(0.5,)) for n in lengths]


def submit_job(state: ClusterState, attention: str, inp: Path, out: Path, logs: Path) -> None:
    """`ray job submit -- python -m inference_worker.job ...`; raises if the job fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= state.client_env()
    ray = str(Path(sys.executable).parent / "ray")
    argv = [
        ray,
        "job",
        "submit",
        "--address",
        state.dashboard_url,
        "--",
        "python",
        "-m",
        "inference_worker.job",
        "--store",
        state.store_address,
        "--attention",
        attention,
        "--input",
        str(inp),
        "--output",
        str(out),
    ]
    log.info("submitting the %s-attention job to %s", attention, state.dashboard_url)
    with logs.open("w") as f:
        done = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{attention} job failed (exit {done.returncode}); log: {logs}")


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}


def agreement(a: list[int], b: list[int]) -> float:
    """Fraction of positions where two greedy continuations agree, up to the first divergence."""
    n = max(len(a), len(b), 1)
    same = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    return same / n


def table(samples: list[Sample], full: dict[str, Any], retro: dict[str, Any]) -> str:
    head = (
        "| tokens | full correct | retro correct | agreement | hit ratio | store MB "
        "| full tok/s | retro tok/s | retro answer |"
    )
    rows = [head, "|" + "---|" * 9]
    for s in samples:
        f, r = full[s.id], retro[s.id]
        rs = r["stats"]
        rows.append(
            f"| {s.length} | {score(f['text'], s.answers, s.metric) == 100.0} "
            f"| {score(r['text'], s.answers, s.metric) == 100.0} "
            f"| {agreement(f['token_ids'], r['token_ids']):.2f} | {rs.get('hit_ratio', 0.0):.2f} "
            f"| {rs.get('store_fetched_bytes', 0) / 1e6:.1f} "
            f"| {f['stats']['decode_tokens_per_s']:.1f} | {rs['decode_tokens_per_s']:.1f} "
            f"| {r['text'].strip()[:24]!r} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(prog="python -m inference_worker.demo", description=__doc__)
    parser.add_argument(
        "--lengths",
        default=",".join(map(str, LENGTHS)),
        help="comma-separated prompt lengths in tokens",
    )
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    samples = passkey_samples(tuple(int(x) for x in args.lengths.split(",")), args.seed)
    with tempfile.TemporaryDirectory(prefix="wavekv-demo-") as tmp:
        work = Path(tmp)
        inp = work / "prompts.jsonl"
        inp.write_text(
            "".join(
                json.dumps({"id": s.id, "prompt": s.token_ids, "max_new_tokens": s.max_new_tokens})
                + "\n"
                for s in samples
            )
        )
        state = up(ClusterSettings(state_dir=work / "cluster", num_cpus=2))
        try:
            log.info("cluster up: store %s, Ray %s", state.store_address, state.dashboard_url)
            for attention in ("full", "retroinfer"):
                submit_job(
                    state, attention, inp, work / f"{attention}.jsonl", work / f"{attention}.log"
                )
            full, retro = read_results(work / "full.jsonl"), read_results(work / "retroinfer.jsonl")
        finally:
            down(work / "cluster")
    print(table(samples, full, retro))
    return 0


if __name__ == "__main__":
    sys.exit(main())
