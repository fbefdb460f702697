"""PNG plots of a summary (matplotlib, Agg backend: no display needed).

Every plot has axis labels and a legend, shows the sample count behind each point (in the
x tick labels, or in the legend where a series has its own x), and draws series that may
coincide with distinct markers and small x offsets, so equal scores never hide a series.
The budget plot puts each RetroInfer point at the fraction of clusters it really retrieved
(what the retrieval floor makes of the nominal budget), not at the nominal budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">")
OFFSET = 0.035  # log2-axis offset between neighbouring series (fraction of an octave)
NAN = float("nan")


def _label(config: dict[str, Any]) -> str:
    if config["attention"] == "full":
        return "full attention"
    if config["default"]:
        floor = f", floor {config['floor']}" if config.get("floor") else ""
        return f"RetroInfer default ({100 * config['budget']:g}%{floor})"
    return f"RetroInfer {100 * config['budget']:g}% (no floor)"


def _style(config: dict[str, Any], index: int, sweep: list[dict[str, Any]]) -> dict[str, Any]:
    """Full attention: hollow black circles; default: red squares; sweep: dashed, shaded."""
    if config["attention"] == "full":
        return {"color": "black", "marker": "o", "markersize": 9, "mfc": "none", "lw": 2.2}
    if config["default"]:
        return {"color": "tab:red", "marker": "s", "markersize": 6, "lw": 2.2}
    shade = plt.get_cmap("viridis")(sweep.index(config) / max(len(sweep) - 1, 1))
    marker = MARKERS[(index + 2) % len(MARKERS)]
    return {"color": shade, "marker": marker, "markersize": 5, "lw": 1, "ls": "--"}


def _shift(xs: list[float], index: int, count: int) -> list[float]:
    """x positions of series `index` of `count`, spread around the true x on a log axis."""
    factor = 2 ** (OFFSET * (index - (count - 1) / 2))
    return [x * factor for x in xs]


def _minor_percent(value: float, _pos: int) -> str:
    """Label of a minor log tick: 2x and 5x a power of ten, others unlabelled."""
    lead = f"{value:.0e}"[0]
    return f"{value:g}%" if lead in "25" else ""


def _length_ticks(ax: Any, lengths: list[int], counts: list[int], fontsize: int = 8) -> None:
    ax.set_xscale("log", base=2)
    labels = [f"{n / 1024:g}K\nn={c}" for n, c in zip(lengths, counts, strict=True)]
    ax.set_xticks(lengths, labels, fontsize=fontsize)
    ax.minorticks_off()


def _counts(lengths: list[int], group: dict[str, Any]) -> list[int]:
    """Sample counts at each length of a {length: {"score", "n"}} group."""
    return [group.get(str(n), {"n": 0})["n"] for n in lengths]


def accuracy_vs_length(summary: dict[str, Any]) -> Figure:
    """Mean accuracy over tasks against prompt length, one line per configuration."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    lengths, configs = summary["lengths"], summary["configs"]
    sweep = [c for c in configs if c["attention"] != "full" and not c["default"]]
    for i, config in enumerate(configs):
        by_length = summary["results"][config["key"]]["by_length"]
        ys = [by_length[str(n)]["score"] if str(n) in by_length else NAN for n in lengths]
        xs = _shift(lengths, i, len(configs))
        ax.plot(xs, ys, label=_label(config), zorder=10 - i, **_style(config, i, sweep))
    _length_ticks(ax, lengths, _counts(lengths, summary["results"][configs[0]["key"]]["by_length"]))
    ax.set_xlabel("context length (tokens); n = prompts per point (all tasks)")
    ax.set_ylabel("accuracy, mean over tasks (0-100)")
    ax.set_ylim(-3, 103)
    ax.set_title(
        f"Accuracy vs context length ({summary['meta'].get('model', 'model')})", fontsize=10
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def accuracy_by_task(summary: dict[str, Any]) -> Figure:
    """Per task: full attention and RetroInfer (default) against length, small multiples."""
    tasks, lengths = summary["tasks"], summary["lengths"]
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.9 * rows + 0.6), squeeze=False)
    series = [
        (next(c for c in summary["configs"] if c["key"] == key), key)
        for key in (summary["full"], summary["default"])
        if key is not None
    ]
    for ax, task in zip(axes.flat, tasks, strict=False):
        counts: list[int] = []
        for i, (config, key) in enumerate(series):
            cells = summary["results"][key]["cells"].get(task, {})
            ys = [cells[str(n)]["score"] if str(n) in cells else NAN for n in lengths]
            ax.plot(
                _shift(lengths, i, len(series)), ys, label=_label(config), **_style(config, i, [])
            )
            counts = counts or _counts(lengths, cells)
        _length_ticks(ax, lengths, counts, fontsize=7)
        ax.set_title(task, fontsize=9)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(series), fontsize=8)
    fig.supxlabel("context length (tokens); n = prompts per point", fontsize=9)
    fig.supylabel("accuracy (0-100)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def _real_x(entry: dict[str, Any], length: str | None) -> float | None:
    """Real retrieved fraction (%) of a sweep entry, overall (length None) or at one length."""
    real = entry.get("retrieved") or {}
    value = real.get("overall") if length is None else real.get("by_length", {}).get(length)
    return None if value is None else 100 * value


def accuracy_vs_budget(summary: dict[str, Any]) -> Figure:
    """Accuracy against the fraction of clusters really retrieved, per length and overall;
    the default run (a star) sits where its floor puts it; full attention as levels.
    Lengths without an index (prompts below the index threshold) have no real fraction and
    are left out when the records carry real fractions."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    sweep = summary["sweep"]
    real = any(_real_x(s, None) is not None for s in sweep)
    full = summary["results"].get(summary["full"]) if summary["full"] else None
    cmap = plt.get_cmap("plasma")
    for i, n in enumerate(summary["lengths"]):
        style = {"color": cmap(i / max(len(summary["lengths"]), 1)), "marker": MARKERS[i % 9]}
        drawn = _series(ax, sweep, str(n), real, f"RetroInfer {n / 1024:g}K", style, 1.0)
        if drawn and full and str(n) in full["by_length"]:
            level = full["by_length"][str(n)]["score"]
            ax.axhline(level, color=style["color"], lw=0.9, ls=":")
    _series(ax, sweep, None, real, "RetroInfer, mean", {"color": "tab:red", "marker": "s"}, 2.5)
    if full:
        label = "full attention, mean (dotted: per length)"
        ax.axhline(full["overall"]["score"], color="black", lw=2, ls="--", label=label)
    label = "RetroInfer default (stars; its floor sets the x)"
    ax.plot([], [], marker="*", ms=13, color="white", mec="black", ls="none", label=label)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
    # a narrow range may hold one decade tick only: label the minor 2x and 5x ticks as well
    ax.xaxis.set_minor_formatter(FuncFormatter(_minor_percent))
    what = "really retrieved (per request, mean)" if real else "nominal budget"
    ax.set_xlabel(f"clusters retrieved exactly, % of all: {what}")
    ax.set_ylabel("accuracy, mean over tasks (0-100)")
    ax.set_ylim(-3, 103)
    ax.set_title("Accuracy vs retrieval budget", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _series(
    ax: Any,
    sweep: list[dict[str, Any]],
    length: str | None,
    real: bool,
    label: str,
    style: dict[str, Any],
    width: float,
) -> bool:
    """One length's (or, length None, the mean's) sweep line and the default's star; returns
    whether anything was drawn. Label: with the sample count of the series."""
    points = []
    for s in sweep:
        entry = s if length is None else s["by_length"].get(length)
        x = _real_x(s, length) if real else 100 * s["budget"]
        if entry is not None and x is not None:
            points.append((x, entry["score"], entry["n"], s["default"]))
    line = [(x, y) for x, y, _, default in points if not default]
    if line:
        xs, ys = zip(*line, strict=True)
        ax.plot(xs, ys, lw=width, ms=5, label=f"{label} (n={points[0][2]})", **style)
    star = {"marker": "*", "ms": 17 if length is None else 13, "mec": "black", "ls": "none"}
    for x, y, _, default in points:
        if default:
            ax.plot(x, y, color=style["color"], **star)
    return bool(points)


def write_all(summary: dict[str, Any], out: Path) -> list[Path]:
    """The PNGs of a summary under `out` (the budget plot only with a sweep)."""
    out.mkdir(parents=True, exist_ok=True)
    figures = {
        "accuracy_vs_length.png": accuracy_vs_length,
        "accuracy_by_task.png": accuracy_by_task,
    }
    if len(summary["sweep"]) > 1:
        figures["accuracy_vs_budget.png"] = accuracy_vs_budget
    paths = []
    for name, draw in figures.items():
        fig = draw(summary)
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        paths.append(out / name)
    return paths
