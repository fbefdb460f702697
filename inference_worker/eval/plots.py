"""PNG plots of a summary (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _label(config: dict[str, Any]) -> str:
    if config["attention"] == "full":
        return "full attention"
    suffix = " (default)" if config["default"] else ""
    return f"RetroInfer {100 * config['budget']:g}%{suffix}"


def accuracy_vs_length(summary: dict[str, Any], path: Path) -> Path:
    """Mean accuracy over tasks against prompt length, one line per configuration."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lengths = summary["lengths"]
    sweep = [c for c in summary["configs"] if c["attention"] != "full" and not c["default"]]
    cmap = plt.get_cmap("viridis")
    for i, config in enumerate(summary["configs"]):
        by_length = summary["results"][config["key"]]["by_length"]
        ys = [by_length[str(n)]["score"] if str(n) in by_length else float("nan") for n in lengths]
        if config["attention"] == "full":
            style: dict[str, Any] = {"color": "black", "linewidth": 2.5, "marker": "o"}
        elif config["default"]:
            style = {"color": "tab:red", "linewidth": 2.5, "marker": "s"}
        else:
            shade = cmap(sweep.index(config) / max(len(sweep) - 1, 1))
            style = {"color": shade, "linewidth": 1, "linestyle": "--", "marker": "."}
        ax.plot(lengths, ys, label=_label(config), zorder=10 - i, **style)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [f"{n / 1024:g}K" for n in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("accuracy (mean over tasks)")
    ax.set_ylim(-2, 102)
    ax.set_title(
        f"Accuracy vs context length ({summary['meta'].get('model', 'model')})", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def accuracy_vs_budget(summary: dict[str, Any], path: Path) -> Path:
    """Mean accuracy against retrieval budget, per length and overall; full attention drawn."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sweep = summary["sweep"]
    budgets = [100 * s["budget"] for s in sweep]
    cmap = plt.get_cmap("plasma")
    lengths = summary["lengths"]
    full = summary["results"].get(summary["full"]) if summary["full"] else None
    for i, n in enumerate(lengths):
        color = cmap(i / max(len(lengths), 1))
        ys = [s["by_length"].get(str(n), {"score": float("nan")})["score"] for s in sweep]
        ax.plot(
            budgets, ys, color=color, linewidth=1, marker=".", label=f"RetroInfer {n / 1024:g}K"
        )
        if full and str(n) in full["by_length"]:
            ax.axhline(
                full["by_length"][str(n)]["score"], color=color, linewidth=0.8, linestyle=":"
            )
    ax.plot(
        budgets,
        [s["score"] for s in sweep],
        color="tab:red",
        linewidth=2.5,
        marker="s",
        label="RetroInfer, mean",
    )
    if full:
        ax.axhline(
            full["overall"]["score"],
            color="black",
            linewidth=2,
            linestyle="--",
            label="full attention, mean (dotted: per length)",
        )
    for s in sweep:
        if s["default"]:
            ax.axvline(100 * s["budget"], color="gray", linewidth=0.8, linestyle="-.")
    ax.set_xscale("log")
    ax.set_xticks(budgets, [f"{b:g}%" for b in budgets])
    ax.set_xlabel("retrieval budget (% of clusters retrieved exactly; dash-dot: default)")
    ax.set_ylabel("accuracy (mean over tasks)")
    ax.set_ylim(-2, 102)
    ax.set_title("Accuracy vs retrieval budget", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def accuracy_by_task(summary: dict[str, Any], path: Path) -> Path:
    """Per task: full attention and RetroInfer (default) against length, small multiples."""
    tasks = summary["tasks"]
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    lengths = summary["lengths"]
    for ax, task in zip(axes.flat, tasks, strict=False):
        for key, color in ((summary["full"], "black"), (summary["default"], "tab:red")):
            cells = summary["results"][key]["cells"].get(task, {}) if key else {}
            ys = [cells[str(n)]["score"] if str(n) in cells else float("nan") for n in lengths]
            ax.plot(lengths, ys, color=color, marker="o", linewidth=1.5)
        ax.set_title(task, fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [f"{n / 1024:g}K" for n in lengths], fontsize=7)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.suptitle("Per task: full attention (black) vs RetroInfer default (red)", fontsize=10)
    return _save(fig, path)


def write_all(summary: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        accuracy_vs_length(summary, out / "accuracy_vs_length.png"),
        accuracy_by_task(summary, out / "accuracy_by_task.png"),
    ]
    if len(summary["sweep"]) > 1:
        paths.append(accuracy_vs_budget(summary, out / "accuracy_vs_budget.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
