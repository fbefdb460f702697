"""Run a kernel check in a subprocess, compiled or under Triton's CPU interpreter.

TRITON_INTERPRET is read when triton is imported, so an interpreted check needs its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys


def run_check(args: list[str], interpret: bool = True, timeout: int = 600) -> None:
    """`python *args` must exit 0 and print "ok" (TRITON_INTERPRET=1 when `interpret`)."""
    env = {**os.environ, **({"TRITON_INTERPRET": "1"} if interpret else {})}
    out = subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
