"""`wavekv`: store, serve, job, cluster, eval and bench under one command.

Every subcommand hands its arguments, untouched, to the component's own entry point (the same
one `python -m <module>` runs), imported lazily: `wavekv store` loads neither torch nor Ray.
Each entry point reads its WAVEKV_* settings itself and reports a bad flag or variable as a
one-line usage error with exit code 2.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import click

PASSTHROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}
BENCHMARKS = Path("benchmarks")  # the repository's top-level benchmark programs


def _version() -> str:
    return metadata.version("wavekv")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    _version(), "--version", "-V", prog_name="wavekv", message="%(prog)s %(version)s"
)
def cli() -> None:
    """WaveKV: RetroInfer as a service (KV store, Ray workers, OpenAI-compatible server)."""


def _passthrough(name: str, summary: str) -> click.Command:
    """A subcommand that forwards every argument (including --help) to its entry point."""

    def decorate(fn: click.decorators.FC) -> click.Command:
        command = click.command(
            name, context_settings=PASSTHROUGH, add_help_option=False, help=summary
        )(click.argument("args", nargs=-1, type=click.UNPROCESSED)(fn))
        cli.add_command(command)
        return command

    return decorate  # type: ignore[return-value]


def _exit(code: int | None) -> None:
    sys.exit(code or 0)


@_passthrough("store", "The KV store server (`python -m kvstore_server`).")
def store(args: tuple[str, ...]) -> None:
    from kvstore_server.__main__ import main as store_main

    _exit(store_main(list(args), prog="wavekv store"))  # its --help names the program


@_passthrough(
    "serve", "The OpenAI-compatible server on Ray Serve (`python -m inference_worker.serve`)."
)
def serve(args: tuple[str, ...]) -> None:
    from inference_worker.serve.cli import main as serve_main

    _exit(serve_main(list(args), prog="wavekv serve"))


@_passthrough("cluster", "The local cluster on 127.0.0.1: up | status | env | down.")
def cluster(args: tuple[str, ...]) -> None:
    from inference_worker.cluster import main as cluster_main

    _exit(cluster_main(list(args), prog="wavekv cluster"))


@_passthrough("eval", "The RULER-style accuracy harness (`python -m inference_worker.eval`).")
def evaluate(args: tuple[str, ...]) -> None:
    from inference_worker.eval.cli import main as eval_main

    sys.argv = ["wavekv eval", *args]
    _exit(eval_main(list(args)))


@cli.group()
def job() -> None:
    """Batch generation jobs: JSONL prompts in, JSONL completions out."""


@job.command("run", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def job_run(args: tuple[str, ...]) -> None:
    """Run a job from here (`python -m inference_worker.job`)."""
    from inference_worker.job import main as job_main

    _exit(job_main(list(args), prog="wavekv job run"))


@job.command("submit", context_settings=PASSTHROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def job_submit(args: tuple[str, ...]) -> None:
    """Submit a job to a Ray cluster's job server and follow it."""
    from inference_worker.job_submit import main as submit_main

    _exit(submit_main(list(args), prog="wavekv job submit"))


@_passthrough("bench", "A benchmark: `wavekv bench NAME [ARGS]` runs `python -m benchmarks.NAME`.")
def bench(args: tuple[str, ...]) -> None:
    names = sorted(  # programs, not the helper modules they share
        p.stem
        for p in BENCHMARKS.glob("*.py")
        if not p.stem.startswith("_") and 'if __name__ == "__main__"' in p.read_text()
    )
    if not names:
        raise click.UsageError(
            "no benchmarks/ folder here: benchmarks live in the repository checkout; "
            "run `wavekv bench` from its root"
        )
    if not args or args[0] in ("-h", "--help"):
        click.echo("usage: wavekv bench NAME [ARGS]...\n\nbenchmarks: " + ", ".join(names))
        _exit(0 if args else 2)
    if args[0] not in names:
        raise click.UsageError(f"unknown benchmark {args[0]!r}; one of: {', '.join(names)}")
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{args[0]}", *args[1:]], check=False)
    _exit(done.returncode)


def main() -> None:
    cli(prog_name="wavekv")
