"""Safetensors folders (HF layout): config.json plus model.safetensors or a sharded index."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from inference_worker.model.config import ModelConfig

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


def config_from_folder(folder: str | Path) -> ModelConfig:
    """ModelConfig from `<folder>/config.json`."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"model folder {folder} has no config.json")
    return ModelConfig.from_hf_dict(json.loads(path.read_text()))


def shard_files(folder: str | Path) -> list[Path]:
    """The safetensors files of a folder: the index's shards, or the single file."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    if (folder / SINGLE_FILE).is_file():
        return [folder / SINGLE_FILE]
    raise FileNotFoundError(f"model folder {folder} has neither {SINGLE_FILE} nor {INDEX_FILE}")


def load_safetensors_state_dict(folder: str | Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """All tensors of the folder, HF names, cast to `dtype` (rotary buffers dropped)."""
    state: dict[str, torch.Tensor] = {}
    for shard in shard_files(folder):
        for name, tensor in load_file(str(shard)).items():
            if not name.endswith("rotary_emb.inv_freq"):
                state[name] = tensor.to(dtype)
    return state
