"""Aggregation, markdown/JSON report and plots from synthetic result records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inference_worker.eval import aggregate, plots, report
from inference_worker.eval.cli import main

BUDGETS = (0.005, 0.018, 0.1)  # 0.018: the default run (retro@default, floor 64)


def _record(task: str, length: int, index: int, config: str, score: float) -> dict[str, Any]:
    full, default = config == "full", config == "retro@default"
    budget = 0.0 if full else 0.018 if default else float(config.split("@")[1])
    # a 1K prompt builds no index; at 2K (128 clusters) the floor retrieves 64 = 50%
    fraction = None if full or length < 2048 else (0.5 if default else budget)
    return {
        "task": task,
        "length": length,
        "index": index,
        "depth": 0.5,
        "config": config,
        "attention": "full" if full else "retroinfer",
        "budget": budget,
        "min_retrieval_clusters": None if full else 64 if default else 0,
        "retrieved_fraction": fraction,
        "default": default,
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
                key = "retro@default" if budget == 0.018 else f"retro@{budget:g}"
                loss = {0.005: 30.0, 0.018: 0.0, 0.1: 0.0}[budget]
                if budget == 0.018 and length == 2048 and index == 1:
                    loss = 20.0
                records.append(_record("passkey", length, index, key, 100.0 - loss))
                records.append(_record("vt", length, index, key, 50.0))
    return records


def test_macro_averages_and_gap() -> None:
    summary = aggregate.summarize(synthetic_records(), {"model": "m"})
    assert summary["full"] == "full" and summary["default"] == "retro@default"
    assert [c["key"] for c in summary["configs"]] == [
        "full",
        "retro@default",
        "retro@0.005",
        "retro@0.1",
    ]
    assert [c["floor"] for c in summary["configs"]] == [None, 64, 0, 0]
    full, retro = summary["results"]["full"], summary["results"]["retro@default"]
    assert retro["retrieved"] == {"overall": 0.5, "by_length": {"2048": 0.5}}
    assert full["retrieved"] == {"overall": None, "by_length": {}}
    assert summary["sweep"][0]["retrieved"]["by_length"] == {"2048": 0.005}
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
    expected = {"full": 2, "retro@0.005": 1, "retro@default": 0, "retro@0.1": 0}
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
    assert "| 2048 | 4 | 75.0 | 70.0 | -5.0 | 50.0% | 60.0 | 75.0 |" in md
    assert "| 1024 | 4 | 75.0 | 75.0 | +0.0 | - | 60.0 | 75.0 |" in md
    assert "| RetroInfer (default) | 1.8% | 64 | 50.0% at 2048 | 8 | 72.5 | -2.5 | 0 |" in md
    assert "| RetroInfer | 0.5% | 0 | 0.5% at 2048 | 8 | 60.0 | -15.0 | 0 |" in md
    assert "| passkey | 2048 | 2 | 100.0 | 90.0 | -10.0 |" in md
    assert "RetroInfer (1.8%, floor 64)" in md


def _zones(steady: float, retrieved: float, estimated: float, dropped: float, samples: int):  # type: ignore[no-untyped-def]
    return {"steady": steady, "retrieved": retrieved, "estimated": estimated,
            "dropped": dropped, "samples": samples}  # fmt: skip


def test_sampled_attention_mass_is_weighted_by_samples_and_reported(tmp_path: Path) -> None:
    records = synthetic_records()
    default = [r for r in records if r["config"] == "retro@default" and r["length"] == 2048]
    default[0]["stats"] = {"attention_mass": {"5": _zones(0.2, 0.6, 0.1, 0.1, samples=3)}}
    default[1]["stats"] = {"attention_mass": {"5": _zones(0.2, 0.2, 0.3, 0.3, samples=1)}}
    summary = aggregate.summarize(records, {"model": "m", "device": "cpu", "seed": 0})
    assert summary["attention_mass"] == {
        "retro@default": {
            "5": {"samples": 4, "steady": 0.2, "retrieved": 0.5, "estimated": 0.15,
                  "dropped": 0.15},
        }
    }  # fmt: skip
    _, md_path = report.write(summary, tmp_path)
    assert "| retro@default | 5 | 4 | 0.200 | 0.500 | 0.150 | 0.150 |" in md_path.read_text()
    plain = aggregate.summarize(synthetic_records(), {"model": "m", "device": "cpu", "seed": 0})
    assert plain["attention_mass"] == {} and "attention mass" not in report.markdown(plain)


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


def _tick_labels(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_xticklabels()]


def test_length_plot_labels_counts_and_no_hidden_series() -> None:
    summary = aggregate.summarize(synthetic_records(), {"model": "m"})
    fig = plots.accuracy_vs_length(summary)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("context length") and ax.get_ylabel().startswith("accuracy")
    assert _tick_labels(ax) == ["1K\nn=4", "2K\nn=4"]  # 2 tasks x 2 samples per length
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [
        "full attention",
        "RetroInfer default (1.8%, floor 64)",
        "RetroInfer 0.5% (no floor)",
        "RetroInfer 10% (no floor)",
    ]
    # full, default and 10% score 75 at 1K: the three points must not sit on each other
    points = {(float(line.get_xdata()[0]), float(line.get_ydata()[0])) for line in ax.lines}
    assert len(points) == 4
    markers = {(line.get_marker(), line.get_markerfacecolor()) for line in ax.lines}
    assert len(markers) == 4


def test_task_plot_has_axis_labels_legend_counts_and_offsets() -> None:
    summary = aggregate.summarize(synthetic_records(), {"model": "m"})
    fig = plots.accuracy_by_task(summary)
    assert fig._supxlabel.get_text().startswith("context length")
    assert fig._supylabel.get_text().startswith("accuracy")
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "full attention",
        "RetroInfer default (1.8%, floor 64)",
    ]
    vt = fig.axes[1]
    assert vt.get_title() == "vt" and _tick_labels(vt) == ["1K\nn=2", "2K\nn=2"]
    full, default = vt.lines  # both 50 everywhere: drawn side by side, different markers
    assert list(full.get_ydata()) == list(default.get_ydata()) == [50.0, 50.0]
    assert all(a < b for a, b in zip(full.get_xdata(), default.get_xdata(), strict=True))
    assert full.get_marker() != default.get_marker()


def test_budget_plot_uses_the_real_retrieved_fraction() -> None:
    summary = aggregate.summarize(synthetic_records(), {"model": "m"})
    fig = plots.accuracy_vs_budget(summary)
    ax = fig.axes[0]
    assert "really retrieved" in ax.get_xlabel() and ax.get_ylabel().startswith("accuracy")
    by_label = {line.get_label(): line for line in ax.lines}
    sweep_2k = by_label["RetroInfer 2K (n=4)"]
    assert list(sweep_2k.get_xdata()) == [0.5, 10.0]  # percent retrieved, no floor
    stars = [line for line in ax.lines if line.get_marker() == "*" and len(line.get_xdata())]
    # the default's star at 2K sits at the 50% the floor retrieves, not at the nominal 1.8%
    assert [float(line.get_xdata()[0]) for line in stars] == [50.0, 50.0]  # 2K and the mean
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "full attention, mean (dotted: per length)" in legend


def test_budget_axis_labels_minor_ticks_within_a_decade() -> None:
    records = [r for r in synthetic_records() if r["config"] != "retro@0.005"]
    ax = plots.accuracy_vs_budget(aggregate.summarize(records)).axes[0]
    ax.set_xlim(1.5, 9.0)  # no power of ten inside: only minor ticks can carry labels
    ax.figure.canvas.draw()
    labels = {t.get_text() for t in ax.xaxis.get_minorticklabels()} - {""}
    assert labels == {"2%", "5%"}


def test_budget_plot_falls_back_to_nominal_budgets_for_old_records() -> None:
    records = [{**r, "retrieved_fraction": None} for r in synthetic_records()]
    ax = plots.accuracy_vs_budget(aggregate.summarize(records)).axes[0]
    assert "nominal budget" in ax.get_xlabel()
    assert list(ax.lines[0].get_xdata()) == [0.5, 10.0]


def test_no_sweep_writes_no_budget_plot(tmp_path: Path) -> None:
    records = [r for r in synthetic_records() if r["config"] in ("full", "retro@default")]
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
