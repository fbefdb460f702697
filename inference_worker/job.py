"""Batch generation job: JSONL prompts in, JSONL completions out, spread over Ray actors.

    wavekv job run --store HOST:PORT --input in.jsonl --output out.jsonl [--workers N] ...
    wavekv job submit -- --input in.jsonl --output out.jsonl ...   # onto a cluster (job_submit)

(`python -m inference_worker.job` is `wavekv job run`.) Without a Ray cluster address it starts a
local Ray on loopback. Relative paths are relative to the working directory of this process; under
`ray job submit` that is the job server's, so use `wavekv job submit` (which makes them absolute
on the submitting side) or absolute paths. Every flag also reads a WAVEKV_* variable
(inference_worker.settings.JobSettings); flags win.
"""

from __future__ import annotations

import json
import logging
import sys
from argparse import RawDescriptionHelpFormatter
from pathlib import Path
from typing import Any

from inference_worker.settings import CliParser, JobSettings, SettingsError, load, usage_error

log = logging.getLogger("inference_worker.job")
PROG = "python -m inference_worker.job"


class JobError(RuntimeError):
    """A failure the job reports with a clear message and a non-zero exit code."""


FLAGS = {  # flag -> help; each maps to the JobSettings field of the same name
    "--store": "kvstore_server HOST:PORT (env WAVEKV_STORE_ADDRESS; required for retroinfer)",
    "--input": "JSONL: {id, prompt, max_new_tokens?, temperature?, top_p?, seed?}",
    "--output": "JSONL: {id, text, token_ids, stats}",
    "--workers": "InferenceWorker actors, one GPU (or one CPU) each (default 1)",
    "--attention": "retroinfer | full (default retroinfer)",
    "--model": "smollm2-135m (the default), gemma3-270m, a GGUF file or a safetensors folder",
    "--retrieval-budget": "fraction of clusters retrieved exactly (default 0.018)",
    "--estimation-budget": "fraction of clusters estimated (default 0.232)",
    "--min-retrieval-clusters": "floor on retrieved clusters per head (64; 0 = the paper's rule)",
    "--max-new-tokens": "default for records without max_new_tokens (default 32)",
    "--batch-size": "requests sent to an actor per call, batched by its engine (default 8)",
    "--namespace": "store namespace (tenant; default wavekv)",
    "--token-file": "file holding the store's bearer token",
    "--ray-address": "Ray cluster to join (default $RAY_ADDRESS, else a local loopback Ray)",
    "--store-timeout-s": "seconds to wait for the store's answer (default 10)",
    "--placement-timeout-s": "seconds to wait for the actors to start (default 120)",
}


def parser(prog: str = PROG) -> CliParser:
    p = CliParser(prog=prog, description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    for flag, text in FLAGS.items():
        p.add_argument(flag, help=text)
    return p


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> JobSettings:
    """Flags over WAVEKV_* variables; raises SettingsError (one line) on a bad value."""
    args = parser(prog).parse_args(argv)
    settings = load(JobSettings, {f[2:].replace("-", "_"): v for f, v in _flags(args).items()})
    if settings.attention == "retroinfer" and not settings.store:
        raise SettingsError(
            "--store HOST:PORT (or WAVEKV_STORE_ADDRESS) is required with --attention retroinfer"
        )
    return settings


def _flags(args: object) -> dict[str, Any]:
    return {flag: getattr(args, flag[2:].replace("-", "_")) for flag in FLAGS}


def read_records(path: Path) -> list[dict[str, Any]]:
    """Parse and validate the input JSONL; errors name the line and the absolute path."""
    from inference_worker.engine import GenerationRequest

    where = path.absolute()
    if not path.is_file():
        raise JobError(f"input file {str(path)!r} does not exist (looked for {where})")
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
        raise JobError(f"input file {str(path)!r} holds no records ({where})")
    ids = [str(r["id"]) for r in records]
    if len(set(ids)) != len(ids):
        raise JobError(f"input file {str(path)!r} repeats ids")
    return records


def check_output(path: Path) -> None:
    """Fail before any work when the output cannot be written (names the absolute path)."""
    parent = path.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise JobError(f"cannot create the output folder {parent}: {exc}") from exc
    if path.is_dir():
        raise JobError(f"output {str(path)!r} is a folder ({path.absolute()})")


def check_store(address: str, token: str | None, timeout_s: float) -> None:
    """Fail fast with a clear message if the store does not answer."""
    from client import ClientOptions, KVStoreClient

    try:
        with KVStoreClient(address, ClientOptions(token=token, timeout_s=timeout_s)) as store:
            store.get_stats()
    except Exception as exc:
        raise JobError(f"KV store at {address} is unreachable or refused us: {exc}") from exc


def run_config(settings: JobSettings) -> dict[str, Any]:
    """What every actor call carries: attention, the default max_new_tokens, RetroInfer knobs."""
    retro: dict[str, Any] = {}
    for name in ("retrieval_budget", "estimation_budget", "min_retrieval_clusters"):
        value = getattr(settings, name)
        if value is not None:
            retro[name] = value
    if retro:
        from inference_worker.retroinfer import RetroInferConfig

        try:
            RetroInferConfig(**retro)  # validate budgets before any actor starts
        except ValueError as exc:
            raise JobError(f"bad RetroInfer settings: {exc}") from exc
    return {
        "attention": settings.attention,
        "max_new_tokens": settings.max_new_tokens,
        "retro": retro,
    }


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = parse_args(argv, prog)
    except SettingsError as err:
        return usage_error(prog, err)
    try:
        return _run(settings)
    except JobError as exc:
        log.error("%s", exc)
        return 2


def _run(settings: JobSettings) -> int:
    from inference_worker.actor import WorkerOptions
    from inference_worker.driver import JobDriver, PlacementError

    records = read_records(settings.input)
    check_output(settings.output)
    run = run_config(settings)
    token = settings.token_file.read_text().strip() if settings.token_file else None
    if settings.store:
        check_store(settings.store, token, settings.store_timeout_s)
    options = WorkerOptions(
        model_path=settings.model,
        store_address=settings.store,
        namespace=settings.namespace,
        token=token,
    )
    try:
        with JobDriver(options, settings) as driver:
            outcome = driver.run(records, run)
    except PlacementError as exc:
        raise JobError(str(exc)) from exc
    with settings.output.open("w") as f:
        for result in outcome.results:
            f.write(json.dumps(result) + "\n")
    for rid, err in outcome.errors.items():
        log.error("request %s failed: %s", rid, err)
    log.info(
        "wrote %d results to %s (%d failed)",
        len(outcome.results),
        settings.output.absolute(),
        len(outcome.errors),
    )
    return 1 if outcome.errors else 0


if __name__ == "__main__":
    sys.exit(main())
