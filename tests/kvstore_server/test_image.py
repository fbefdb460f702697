"""The store image installs the store's own dependencies only, and Docker never sees `.env`."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "ray", "transformers", "triton", "matplotlib"}


def _closure(extras: set[str]) -> set[str]:
    """Distribution names `pip install .[extras]` asks for (this project's extras expanded)."""
    names, todo, seen = set(), set(extras) | {""}, set()
    requirements = [Requirement(r) for r in importlib.metadata.requires("wavekv") or []]
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for req in requirements:
            if not (req.marker.evaluate({"extra": extra}) if req.marker else extra == ""):
                continue
            if req.name == "wavekv":
                todo |= req.extras - seen
            else:
                names.add(req.name.lower())
    return names


def test_store_image_installs_no_torch_ray_or_transformers() -> None:
    dockerfile = (ROOT / "docker" / "store.Dockerfile").read_text()
    installs = re.findall(r'pip install "?\.(?:\[([\w,]*)\])?"?', dockerfile)
    assert installs, "the store image installs the project"
    for extras in installs:
        names = _closure(set(filter(None, extras.split(","))))
        assert "grpcio" in names and not names & HEAVY, names & HEAVY
    assert "COPY inference_worker" not in dockerfile
    assert _closure({"cpu"}) >= HEAVY  # the worker's install has them all


def test_dockerignore_keeps_env_out() -> None:
    lines = (ROOT / ".dockerignore").read_text().split()
    assert ".env" in lines
