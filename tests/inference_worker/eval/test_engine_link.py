"""End to end: the suite on the real engine and default model (slow: loads the model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inference_worker.eval.cli import run
from inference_worker.eval.config import EvalConfig


@pytest.mark.slow
def test_suite_runs_full_and_retroinfer_through_the_real_engine(tmp_path: Path) -> None:
    # 1200 tokens: above the 1092-token index threshold, so RetroInfer builds a wave index.
    # The model is named as on the command line (--model smollm2-135m).
    config = EvalConfig(
        tasks=("passkey",), lengths=(1200,), samples=1, budgets=(0.1,), device="cpu", out=tmp_path
    )
    summary = run(config, progress=False)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert sorted(r["config"] for r in records) == ["full", "retro@0.1", "retro@default"]
    assert all(r["prompt_tokens"] == 1200 and r["new_tokens"] >= 1 for r in records)
    full = next(r for r in records if r["config"] == "full")
    assert full["score"] == 100.0, full["prediction"]  # the default model finds a 1.2K pass key
    retro = next(r for r in records if r["default"])
    assert retro["stats"]["num_clusters"] > 0 and retro["stats"]["attention"] == "retroinfer"
    # ~74 clusters at 1,200 tokens: the floor of 64 retrieves most of them, not 1.8%
    assert retro["min_retrieval_clusters"] == 64 and retro["retrieved_fraction"] > 0.5
    assert summary["results"]["full"]["overall"]["n"] == 1
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["model"] == "smollm2-135m" and meta["model_file"].endswith(".gguf")
    assert len(meta["git_commit"].removesuffix("+dirty")) == 40
    for name in ("summary.json", "report.md", "meta.json", "accuracy_vs_budget.png"):
        assert (tmp_path / name).exists()
