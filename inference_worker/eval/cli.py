"""`python -m inference_worker.eval`: run the suite, write records, report and plots."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from inference_worker.eval import aggregate, engine_link, plots, report
from inference_worker.eval.config import DEFAULT_MODEL, PRESETS, EvalConfig
from inference_worker.eval.prompt import ANSWER_CAP, Sample
from inference_worker.eval.runner import SuiteRunner, load_records, run_specs
from inference_worker.eval.tasks import TASKS, make_sample
from inference_worker.eval.tokens import PieceEncoder, Tokenizer
from inference_worker.retroinfer.config import CENTROID_FORMATS, RetroInferConfig

DEFAULT_CENTROIDS = RetroInferConfig().centroid_format

log = logging.getLogger("inference_worker.eval")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_length(text: str) -> int:
    """`2048`, `2K`, `7.5K` -> tokens (K = 1024)."""
    t = text.strip().upper()
    try:
        return round(float(t[:-1]) * 1024) if t.endswith("K") else int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad length {text!r}: use tokens like 2048 or 2K"
        ) from None


def parse_fraction(text: str) -> float:
    """`0.018` or `1.8%` -> 0.018."""
    t = text.strip()
    try:
        return float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad fraction {text!r}: use 0.018 or 1.8%") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m inference_worker.eval", description=__doc__)
    _suite_options(p)
    _retroinfer_options(p)
    _run_options(p)
    return p


def _suite_options(p: argparse.ArgumentParser) -> None:
    """What runs: preset, model, tasks, lengths, samples."""
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="default: the default model at 1K-7.5K; quick: minutes on 2 CPU cores; "
        "gemma: gemma3-270m at 4K/8K/16K/32K (a GPU run). Options below override it",
    )
    p.add_argument("--quick", action="store_true", help="the same as --preset quick")
    p.add_argument("--tasks", type=_csv, help=f"comma list or 'all' (tasks: {', '.join(TASKS)})")
    p.add_argument(
        "--lengths", type=lambda s: [parse_length(x) for x in _csv(s)], help="e.g. 1K,2K,4K,7.5K"
    )
    p.add_argument("--samples", type=int, help="samples per (task, length)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--budgets",
        type=lambda s: [parse_fraction(x) for x in _csv(s)],
        help="retrieval budgets to sweep, e.g. 0.5%%,1%%,4%%",
    )
    p.add_argument(
        "--depths", type=lambda s: [parse_fraction(x) for x in _csv(s)], help="e.g. 0%%,50%%,100%%"
    )
    p.add_argument(
        "--model",
        metavar="NAME|PATH",
        help=f"smollm2-135m, gemma3-270m, a GGUF file or a safetensors folder "
        f"(default: the preset's; {DEFAULT_MODEL} unless --preset gemma)",
    )


def _retroinfer_options(p: argparse.ArgumentParser) -> None:
    """Which attention configurations every sample runs under."""
    p.add_argument("--no-sweep", action="store_true", help="only full and RetroInfer default")
    p.add_argument(
        "--full-only", action="store_true", help="only full attention (where the model answers)"
    )
    p.add_argument(
        "--min-retrieval-clusters",
        type=int,
        metavar="N",
        help="retrieval floor of the default RetroInfer run (default: RetroInferConfig's; "
        "0 = the paper's rule). Sweep points always run without a floor",
    )
    p.add_argument(
        "--defer-misses",
        action="store_true",
        help="RetroInfer runs with defer_misses=True (misses estimated for one step)",
    )
    p.add_argument(
        "--centroids",
        choices=sorted(CENTROID_FORMATS),
        default=DEFAULT_CENTROIDS,
        help=f"RetroInfer's centroid_format (default {DEFAULT_CENTROIDS}; model: the model dtype)",
    )
    p.add_argument(
        "--mass-every",
        type=int,
        default=0,
        metavar="N",
        help="every N decode steps, measure where each indexed layer's exact attention mass "
        "falls (steady / retrieved / estimated / dropped; a full read of the layer's clusters "
        "each time; 0 = off)",
    )


def _run_options(p: argparse.ArgumentParser) -> None:
    """Where and how it runs, and what it writes."""
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-new-tokens", type=int, help="cap on each task's answer budget")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    p.add_argument("--store", help="HOST:PORT of a running KV store (default: in-process)")
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (default: ./eval-results/<preset>)",
    )
    p.add_argument(
        "--resume", action="store_true", help="keep finished records in OUT/records.jsonl"
    )
    p.add_argument(
        "--report-only", type=Path, metavar="DIR", help="rebuild report and plots from DIR"
    )
    p.add_argument("--list-tasks", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    overrides: dict[str, Any] = {}
    for name in (
        "samples",
        "seed",
        "batch_size",
        "max_new_tokens",
        "model",
        "device",
        "min_retrieval_clusters",
        "store",
        "out",
    ):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.tasks:
        overrides["tasks"] = tuple(TASKS) if args.tasks == ["all"] else tuple(args.tasks)
    for name in ("lengths", "budgets", "depths"):
        if getattr(args, name):
            overrides[name] = tuple(getattr(args, name))
    if args.no_sweep:
        overrides["budgets"] = ()
    overrides["resume"] = args.resume
    overrides["defer_misses"] = args.defer_misses
    overrides["centroid_format"] = args.centroids
    overrides["full_only"] = args.full_only
    overrides["mass_every"] = args.mass_every
    return PRESETS["quick" if args.quick else args.preset](**overrides)


def build_samples(config: EvalConfig, tokenizer: Tokenizer) -> list[Sample]:
    """Every sample of the run, index-major so an interrupted run covers every cell."""
    enc = PieceEncoder(tokenizer)
    return [
        make_sample(task, enc, length, i, config.seed, config.depths)
        for i in range(config.samples)
        for length in config.lengths
        for task in config.tasks
    ]


def write_outputs(out: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Summary JSON, markdown report and plots from `out/records.jsonl`."""
    records = load_records(out / "records.jsonl")
    if not records:
        raise SystemExit(f"no records in {out / 'records.jsonl'}")
    summary = aggregate.summarize(records, meta)
    json_path, md_path = report.write(summary, out)
    pngs = plots.write_all(summary, out)
    log.info("wrote %s, %s, %s", json_path, md_path, ", ".join(map(str, pngs)))
    return summary


def git_commit() -> str:
    """HEAD of the checkout this code runs from (`+dirty` with uncommitted changes), or
    "unknown" outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if status else "")


def check_context(config: EvalConfig, limit: int) -> None:
    """Fail before the run when a prompt plus its answer cannot fit the model's context of
    `limit` tokens."""
    answer = ANSWER_CAP
    if max(config.lengths) + answer > limit:
        raise SystemExit(
            f"lengths {list(config.lengths)}: {max(config.lengths)} + {answer} answer tokens "
            f"exceed the context of {config.model} ({limit} tokens)"
        )


def run(config: EvalConfig, progress: bool = True, argv: list[str] | None = None) -> dict[str, Any]:
    started = time.time()
    check_context(config, engine_link.context_length(config.model))
    engine = engine_link.load_engine(config.model, config.device, config.mass_every)
    samples = build_samples(config, engine.tokenizer)
    default_budget = engine_link.default_retrieval_budget()
    floor = config.min_retrieval_clusters
    default_floor = engine_link.default_retrieval_floor() if floor is None else floor
    specs = run_specs(default_budget, config.budgets, default_floor, config.full_only)
    records_path = config.out / "records.jsonl"
    config.out.mkdir(parents=True, exist_ok=True)
    done: set[tuple[str, str]] = set()
    if config.resume:
        done = {
            (f"{r['task']}/{r['length']}/{r['index']}", r["config"])
            for r in load_records(records_path)
        }
    else:
        records_path.unlink(missing_ok=True)
    log.info(
        "%d samples x %d configurations (%s)",
        len(samples),
        len(specs),
        ", ".join(s.key for s in specs),
    )
    runner = SuiteRunner(
        engine,
        specs,
        engine_link.make_request,
        functools.partial(
            engine_link.retro_config,
            defer_misses=config.defer_misses,
            centroid_format=config.centroid_format,
        ),
        engine_link.retrieved_fraction,
        default_budget,
        default_floor,
        store=engine_link.open_store(config.store),
        batch_size=config.batch_size,
        max_new_tokens=config.max_new_tokens,
        records_path=records_path,
        progress=progress,
    )
    runner.run(samples, done)
    meta = {
        "model": config.model,
        "model_file": engine_link.model_file(engine),
        "git_commit": git_commit(),
        "device": engine_link.device_name(engine),
        "seed": config.seed,
        "default_retrieval_budget": default_budget,
        "default_min_retrieval_clusters": default_floor,
        **_run_meta(config, argv, started),
    }
    (config.out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return write_outputs(config.out, meta)


def _run_meta(config: EvalConfig, argv: list[str] | None, started: float) -> dict[str, Any]:
    """The run's configuration, command line, finish time, wall time and host."""
    return {
        "config": {
            k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(config).items()
        },
        "command": "python -m inference_worker.eval " + " ".join(argv or []),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.time() - started, 1),
        "host": f"{platform.node()} {platform.machine()}",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.list_tasks:
        print("\n".join(TASKS))
        return 0
    if args.report_only:
        meta_path = args.report_only / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        summary = write_outputs(args.report_only, meta)
    else:
        try:
            config = config_from_args(args)
        except ValueError as exc:
            build_parser().error(str(exc))
        summary = run(config, progress=not args.no_progress, argv=argv)
    print(report.markdown(summary))
    return 0
