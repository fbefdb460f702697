"""Linux process bookkeeping for the local cluster: spawn detached, find members, stop them.

A process is named by (pid, start_ticks) so a recycled pid is never mistaken for ours. Each
cluster component runs in its own session, and `ray start --block` keeps the Ray daemons in the
session of its node, so "members" are every process in a recorded session plus every
descendant of those (Ray job entrypoints start their own sessions under the job supervisor).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(slots=True, frozen=True)
class ProcessId:
    """A process pinned by its start time (clock ticks after boot), safe against pid reuse."""

    pid: int
    start_ticks: int


@dataclass(slots=True, frozen=True)
class ProcStat:
    pid: int
    ppid: int
    session: int
    start_ticks: int


def read_stat(pid: int) -> ProcStat | None:
    """The process's /proc stat, or None when it is gone (zombies count as gone)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # fields[0] is the state (3rd field)
    if fields[0] in ("Z", "X"):
        return None
    return ProcStat(pid, int(fields[1]), int(fields[3]), int(fields[19]))


def all_stats() -> list[ProcStat]:
    stats = (read_stat(int(p.name)) for p in PROC.iterdir() if p.name.isdigit())
    return [s for s in stats if s is not None]


def is_alive(proc: ProcessId) -> bool:
    stat = read_stat(proc.pid)
    return stat is not None and stat.start_ticks == proc.start_ticks


def pin(pid: int) -> ProcessId:
    stat = read_stat(pid)
    if stat is None:
        raise ProcessLookupError(f"process {pid} exited right after it was started")
    return ProcessId(pid, stat.start_ticks)


def members(leaders: Iterable[ProcessId]) -> set[ProcessId]:
    """Live processes in the leaders' sessions plus all their live descendants.

    A leader's session still counts after the leader exited, unless its pid now names another
    process (then the session id may be that stranger's).
    """
    sessions = {p.pid for p in leaders if is_alive(p) or read_stat(p.pid) is None}
    stats = all_stats()
    found = {s.pid for s in stats if s.session in sessions or s.pid in sessions}
    children: dict[int, list[int]] = {}
    for s in stats:
        children.setdefault(s.ppid, []).append(s.pid)
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    by_pid = {s.pid: s for s in stats}
    return {ProcessId(pid, by_pid[pid].start_ticks) for pid in found}


def spawn(argv: Sequence[str], log: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start argv in a new session, detached from our terminal, output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
            close_fds=True,
        )


def send(procs: Iterable[ProcessId], sig: signal.Signals) -> None:
    for proc in procs:
        if is_alive(proc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)


def wait_gone(procs: Iterable[ProcessId], timeout_s: float) -> set[ProcessId]:
    """Block (on pidfds, no polling) until every process exits or the timeout; return survivors."""
    fds: dict[int, ProcessId] = {}
    for proc in procs:
        try:
            fd = os.pidfd_open(proc.pid)
        except ProcessLookupError:
            continue
        if is_alive(proc):  # checked after opening: the fd refers to this very process
            fds[fd] = proc
        else:
            os.close(fd)
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout_s
    try:
        while fds and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(left * 1000):
                poller.unregister(fd)
                os.close(fd)
                del fds[fd]
    finally:
        for fd in fds:
            os.close(fd)
    return {p for p in fds.values() if is_alive(p)}


def stop(leaders: Sequence[ProcessId], timeout_s: float) -> list[ProcessId]:
    """Stop leaders and all members; return those that needed SIGKILL.

    SIGTERM the leaders and give them `timeout_s` to stop their own children (Ray's `--block`
    mode does), then SIGTERM whatever member is left (e.g. a job entrypoint in its own session)
    and finally SIGKILL the rest.
    """
    group = members(leaders)
    send(leaders, signal.SIGTERM)
    wait_gone(leaders, timeout_s)
    rest = {p for p in group | members(leaders) if is_alive(p)}
    send(rest, signal.SIGTERM)
    survivors = wait_gone(rest, min(timeout_s, 5.0))
    survivors |= members(leaders) - group  # processes born during the shutdown
    send(survivors, signal.SIGKILL)
    still = wait_gone(survivors, 5.0)
    if still:
        raise RuntimeError(f"processes survived SIGKILL: {sorted(p.pid for p in still)}")
    return sorted(survivors, key=lambda p: p.pid)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
