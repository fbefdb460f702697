"""Host memory: the default capacity, and the allocator settings that give freed memory back.

Default capacity: DEFAULT_CAPACITY_FRACTION of the memory this process may use at start (the
smaller of the host's MemTotal and a cgroup v2/v1 limit). K/V lives in shared-memory slabs whose
tmpfs (/dev/shm) is by default half of RAM too, so the default fills neither.

`return_freed_memory` fixes glibc's mmap threshold at 2 MiB: larger buffers (a put's segment
payload) are mmap'ed and unmapped when freed, so the process's RSS falls back after a burst
(glibc's dynamic threshold otherwise moves large buffers onto the heap, which keeps them), while
the 1 MiB chunk messages of puts and fetches stay on the heap (an mmap per chunk costs a page
fault per 4 KiB: fetches measured ~1.5x slower with a 256 KiB threshold). `trim` collects cyclic
garbage and hands the heap's free pages back (malloc_trim); the server's sweep runs it after
sequences went away.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from pathlib import Path

log = logging.getLogger("kvstore_server.memory")

DEFAULT_CAPACITY_FRACTION = 0.5
MMAP_THRESHOLD_BYTES = 2 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def host_memory_bytes() -> int:
    """Memory this process may use: MemTotal, or a smaller cgroup limit."""
    total = _meminfo_total()
    for path in _CGROUP_LIMITS:
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and 0 < int(raw) < total:
            total = int(raw)
    return total


def default_capacity_bytes() -> int:
    return int(host_memory_bytes() * DEFAULT_CAPACITY_FRACTION)


def _meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemTotal line")


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name is not None else None
    except OSError:
        return None


def return_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module docstring); False if not glibc."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD_BYTES) == 1
    if not ok:
        log.warning("mallopt refused the mmap/trim thresholds")
    return ok


def trim() -> bool:
    """Collect cyclic garbage (grpc.aio call objects hold cycles), then give the heap's free
    pages back to the OS (glibc malloc_trim); False if not glibc."""
    gc.collect()
    malloc_trim = getattr(_libc(), "malloc_trim", None)
    return bool(malloc_trim(0)) if malloc_trim is not None else False
