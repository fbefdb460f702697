"""Aggregation, markdown/JSON report and plots from synthetic result records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inference_worker.eval import aggregate, plots, report
from inference_worker.eval.cli import main

BUDGETS = (0.005, 0.018, 0.1)  # 0.018 is the default run


def _record(task: str, length: int, index: int, config: str, score: float) -> dict[str, Any]:
    full = config == "full"
    budget = 0.0 if full else float(config.split("@")[1])
    return {
        "task": task,
        "length": length,
        "index": index,
        "depth": 0.5,
        "config": config,
        "attention": "full" if full else "retroinfer",
        "budget": budget,
        "default": budget == 0.018,
        "score": score,
        "prediction": "x",
        "answers": ["x"],
        "metric": "all",
        "prompt_tokens": length,
        "new_tokens": 4,
        "seconds": 0.1,
        "stats": {},
    }


def synthetic_records() -> list[dict[str, Any]]:
    """passkey: full 100, retro 100 - 10 per halving of budget below 10%; vt: 50 everywhere;
    at 2048 RetroInfer default loses 20 on passkey sample 1 only."""
    records = []
    for length in (1024, 2048):
        for index in (0, 1):
            records.append(_record("passkey", length, index, "full", 100.0))
            records.append(_record("vt", length, index, "full", 50.0))
            for budget in BUDGETS:
                key = f"retro@{budget:g}"
                loss = {0.005: 30.0, 0.018: 0.0, 0.1: 0.0}[budget]
                if budget == 0.018 and length == 2048 and index == 1:
                    loss = 20.0
                records.append(_record("passkey", length, index, key, 100.0 - loss))
                records.append(_record("vt", length, index, key, 50.0))
    return records


def test_macro_averages_and_gap() -> None:
    summary = aggregate.summarize(synthetic_records(), {"model": "m"})
    assert summary["full"] == "full" and summary["default"] == "retro@0.018"
    assert [c["key"] for c in summary["configs"]] == [
        "full",
        "retro@0.018",
        "retro@0.005",
        "retro@0.1",
    ]
    full, retro = summary["results"]["full"], summary["results"]["retro@0.018"]
    assert full["overall"] == {"score": 75.0, "n": 8}
    assert retro["cells"]["passkey"]["2048"] == {"score": 90.0, "n": 2}
    assert retro["by_task"]["passkey"]["score"] == 95.0  # mean of 100 (1K) and 90 (2K)
    assert retro["by_length"]["2048"]["score"] == 70.0  # mean of passkey 90 and vt 50
    assert retro["overall"]["score"] == 72.5
    assert summary["gap"]["overall"]["score"] == -2.5
    assert summary["gap"]["by_task"]["vt"]["score"] == 0.0
    assert summary["gap"]["cells"]["passkey"]["2048"]["score"] == -10.0
    assert [s["budget"] for s in summary["sweep"]] == [0.005, 0.018, 0.1]
    assert summary["sweep"][0]["score"] == 60.0
    assert summary["informative"]["tasks"] == ["passkey", "vt"]
    assert summary["informative"]["gap"] == -2.5


def test_tasks_full_attention_cannot_do_are_left_out_of_the_informative_gap() -> None:
    records = [r for r in synthetic_records() if r["task"] == "passkey"]
    records += [
        {**r, "task": "cwe", "score": 0.0} for r in synthetic_records() if r["task"] == "vt"
    ]
    summary = aggregate.summarize(records)
    assert summary["gap"]["overall"]["score"] == -2.5  # (-5 + 0) / 2
    assert summary["informative"]["tasks"] == ["passkey"]
    assert summary["informative"]["gap"] == -5.0
    assert "Over the 1 tasks where full attention scores at least 10 (passkey)" in report.markdown(
        summary
    )


def test_empty_outputs_are_counted_per_configuration() -> None:
    records = synthetic_records()
    for rec in records[:3]:
        rec["prediction"] = " \n"
    summary = aggregate.summarize(records)
    expected = {"full": 2, "retro@0.005": 1, "retro@0.018": 0, "retro@0.1": 0}
    assert summary["empty_outputs"] == expected


def test_unfinished_samples_are_left_out_of_every_configuration() -> None:
    records = synthetic_records()
    records.append(_record("passkey", 1024, 9, "full", 0.0))  # no RetroInfer records for it
    summary = aggregate.summarize(records)
    assert summary["dropped_incomplete_samples"] == 1
    assert summary["results"]["full"]["overall"]["score"] == 75.0


def test_report_files(tmp_path: Path) -> None:
    summary = aggregate.summarize(synthetic_records(), {"model": "m", "device": "cpu", "seed": 0})
    json_path, md_path = report.write(summary, tmp_path)
    assert json.loads(json_path.read_text())["gap"]["overall"]["score"] == -2.5
    md = md_path.read_text()
    assert "| passkey | 4 | 100.0 | 95.0 | -5.0 | 70.0 | 100.0 |" in md
    assert "| 2048 | 4 | 75.0 | 70.0 | -5.0 | 60.0 | 75.0 |" in md
    assert "| RetroInfer (default) | 1.8% | 8 | 72.5 | -2.5 | 0 |" in md
    assert "| passkey | 2048 | 2 | 100.0 | 90.0 | -10.0 |" in md


def test_plots_are_png(tmp_path: Path) -> None:
    summary = aggregate.summarize(synthetic_records(), {"model": "m"})
    paths = plots.write_all(summary, tmp_path)
    assert {p.name for p in paths} == {
        "accuracy_vs_length.png",
        "accuracy_vs_budget.png",
        "accuracy_by_task.png",
    }
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_no_sweep_writes_no_budget_plot(tmp_path: Path) -> None:
    records = [r for r in synthetic_records() if r["config"] in ("full", "retro@0.018")]
    summary = aggregate.summarize(records)
    names = {p.name for p in plots.write_all(summary, tmp_path)}
    assert "accuracy_vs_budget.png" not in names
    assert "RetroInfer 0.5%" not in report.markdown(summary)


def test_report_only_cli_rebuilds_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (tmp_path / "records.jsonl").open("w") as fh:
        for rec in synthetic_records():
            fh.write(json.dumps(rec) + "\n")
    assert main(["--report-only", str(tmp_path)]) == 0
    assert "## By task" in capsys.readouterr().out
    for name in ("summary.json", "report.md", "accuracy_vs_length.png", "accuracy_vs_budget.png"):
        assert (tmp_path / name).exists()
