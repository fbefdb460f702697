"""docs/store.md's SDK example runs as written against a real store."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from kvstore_server.embedded import EmbeddedStore
from kvstore_server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]


def _sdk_example() -> str:
    doc = (ROOT / "docs" / "store.md").read_text()
    section = doc[doc.index("\n## SDK\n") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    return code


def test_store_md_sdk_example_runs_verbatim() -> None:
    code = _sdk_example()
    assert "WAVEKV_STORE_ADDRESS" in code
    with EmbeddedStore(ServerSettings(port=0, log_level="WARNING")) as store:
        env = {**os.environ, "WAVEKV_STORE_ADDRESS": store.target}
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.Size([" in result.stdout
