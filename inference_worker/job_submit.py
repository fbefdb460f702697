"""`wavekv job submit`: run `inference_worker.job` on a Ray cluster through its job server.

    wavekv job submit [--address URL] [--state-dir DIR] [--no-wait] -- --input in.jsonl \
        --output out.jsonl [job flags]

What it adds to `ray job submit -- python -m inference_worker.job ...`:
- the job's flags are checked here first (a bad value is a usage error before anything runs);
- relative `--input`, `--output` and `--token-file` paths are made absolute here, on the
  submitting side (the job server's working directory is not yours). The cluster must see the
  same path (the local cluster does; with docker compose use the container's `/data/...`);
- without `--address` and `$RAY_ADDRESS` it submits to the local cluster of `wavekv cluster up`
  (its state dir), with that cluster's token and, when `--store` is not given, its store;
- it follows the job's logs and exits with the job's outcome (0 succeeded, 1 failed); stopping
  it (Ctrl-C, SIGTERM) stops the job. `ray job submit` instead leaves the job running when its
  client is interrupted (`ray job stop ID` stops it). `--no-wait` submits and returns at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from inference_worker.cluster_state import ClusterState
from inference_worker.job import parse_args as parse_job_args
from inference_worker.settings import (
    CliParser,
    ClusterSettings,
    SettingsError,
    load,
    usage_error,
)

PROG = "wavekv job submit"
PATH_FLAGS = ("--input", "--output", "--token-file")
STOP_WAIT_S = 60.0  # bound on the wait for a stopped job to end


def parser(prog: str) -> CliParser:
    p = CliParser(
        prog=prog,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{prog} [--address URL] [--state-dir DIR] [--no-wait] -- JOB_FLAGS...",
    )
    p.add_argument(
        "--address", help="job server URL (default $RAY_ADDRESS, else the local cluster)"
    )
    p.add_argument("--state-dir", help="local cluster state (default $WAVEKV_CLUSTER_DIR)")
    p.add_argument("--no-wait", action="store_true", help="submit and return the job id")
    return p


def absolute_paths(argv: list[str], cwd: Path) -> list[str]:
    """`argv` with the values of PATH_FLAGS made absolute against `cwd`."""
    out: list[str] = []
    pending = False
    for word in argv:
        if pending:
            out.append(str(cwd / Path(word).expanduser()))
            pending = False
        elif word in PATH_FLAGS:
            out.append(word)
            pending = True
        elif word.split("=", 1)[0] in PATH_FLAGS and "=" in word:
            flag, value = word.split("=", 1)
            out.append(f"{flag}={cwd / Path(value).expanduser()}")
        else:
            out.append(word)
    return out


def _target(args: argparse.Namespace) -> tuple[str, dict[str, str], ClusterState | None]:
    """(job server URL, HTTP headers, the local cluster when it is the target)."""
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        return address, {}, None
    settings = load(ClusterSettings, {"state_dir": args.state_dir})
    state = ClusterState.load(settings.state_dir)
    if state is None:
        raise SettingsError(
            f"no --address, no $RAY_ADDRESS and no local cluster in {settings.state_dir} "
            "(start one with `wavekv cluster up`)"
        )
    return state.dashboard_url, {"Authorization": f"Bearer {state.token()}"}, state


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:  # our flags before it, the job's after it
        ours, job_argv = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
        args = parser(prog).parse_args(ours)
    else:  # `wavekv job submit -- ...`: click has removed the `--` already
        args, job_argv = parser(prog).parse_known_args(argv)
    try:
        address, headers, cluster = _target(args)
        if cluster is not None and not any(w.split("=")[0] == "--store" for w in job_argv):
            job_argv = [*job_argv, "--store", cluster.store_address]
        job_argv = absolute_paths(job_argv, Path.cwd())
        parse_job_args(job_argv, prog=f"{prog} --")  # the job's own checks, here and now
    except SettingsError as err:
        return usage_error(prog, err)
    entrypoint = shlex.join(["python", "-m", "inference_worker.job", *job_argv])
    return submit(address, headers, entrypoint, wait=not args.no_wait)


def submit(address: str, headers: dict[str, str], entrypoint: str, wait: bool) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    with _interrupt_on(signal.SIGTERM):  # from here on SIGTERM acts as Ctrl-C
        client = JobSubmissionClient(address, headers=headers or None)
        job_id = client.submit_job(entrypoint=entrypoint)
        try:
            print(f"submitted job {job_id} to {address}: {entrypoint}", flush=True)
            if not wait:
                print(f"follow: ray job logs --follow {job_id}; stop: ray job stop {job_id}")
                return 0
            asyncio.run(_tail(client, job_id))
        except KeyboardInterrupt:
            client.stop_job(job_id)
            final = _wait_terminal(client, job_id)
            print(f"stopped job {job_id} ({final})", file=sys.stderr)
            return 130
    status = client.get_job_status(job_id)
    info = client.get_job_info(job_id)
    print(f"job {job_id} {status}" + (f": {info.message}" if info.message else ""))
    return 0 if status == JobStatus.SUCCEEDED else 1


async def _tail(client: object, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):  # type: ignore[attr-defined]
        print(lines, end="", flush=True)


def _wait_terminal(client: object, job_id: str) -> str:
    """The job's status once it is terminal, or after STOP_WAIT_S (blocking on its log end)."""

    async def wait() -> None:
        await asyncio.wait_for(_drain(client, job_id), STOP_WAIT_S)

    with contextlib.suppress(TimeoutError):
        asyncio.run(wait())
    return str(client.get_job_status(job_id))  # type: ignore[attr-defined]


async def _drain(client: object, job_id: str) -> None:
    async for _ in client.tail_job_logs(job_id):  # type: ignore[attr-defined]
        pass


class _interrupt_on:
    """Turn `sig` into KeyboardInterrupt inside the block (SIGTERM stops the job like Ctrl-C)."""

    def __init__(self, sig: signal.Signals) -> None:
        self.sig = sig
        self.previous: Callable[[int, FrameType | None], object] | int | None = None

    def __enter__(self) -> None:
        self.previous = signal.signal(self.sig, _raise_interrupt)

    def __exit__(self, *exc: object) -> None:
        signal.signal(self.sig, self.previous)  # type: ignore[arg-type]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
