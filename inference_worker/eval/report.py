"""Writes the summary as JSON and as a markdown report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pct(budget: float) -> str:
    return f"{100 * budget:g}%"


def _real(fraction: float | None) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f}%"


def _retrieved(summary: dict[str, Any], key: str) -> dict[str, Any]:
    return summary["results"][key].get("retrieved") or {"overall": None, "by_length": {}}


def _fmt(entry: dict[str, Any] | None, signed: bool = False) -> str:
    if entry is None:
        return "-"
    return f"{entry['score']:+.1f}" if signed else f"{entry['score']:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _sweep_keys(summary: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (c["key"], _pct(c["budget"]))
        for c in summary["configs"]
        if c["attention"] != "full" and not c["default"]
    ]


def _summary_rows(summary: dict[str, Any]) -> list[list[str]]:
    res, full = summary["results"], summary["full"]
    rows = []
    for c in summary["configs"]:
        overall = res[c["key"]]["overall"]
        name = (
            "full attention"
            if c["attention"] == "full"
            else ("RetroInfer (default)" if c["default"] else "RetroInfer")
        )
        budget = "-" if c["attention"] == "full" else _pct(c["budget"])
        floor = "-" if c.get("floor") is None else str(c["floor"])
        real = _retrieved(summary, c["key"])["by_length"]
        retrieved = ", ".join(f"{_real(f)} at {n}" for n, f in real.items()) or "-"
        vs = (
            ""
            if c["key"] == full or full is None
            else (f"{overall['score'] - res[full]['overall']['score']:+.1f}")
        )
        empty = str(summary.get("empty_outputs", {}).get(c["key"], 0))
        rows.append([name, budget, floor, retrieved, str(overall["n"]), _fmt(overall), vs, empty])
    return rows


def _get(res: dict[str, Any], key: str | None, group: str, name: str) -> dict[str, Any] | None:
    return res[key][group].get(name) if key else None


def _grouped_rows(summary: dict[str, Any], group: str, names: list[str]) -> list[list[str]]:
    res, full, default = summary["results"], summary["full"], summary["default"]
    real = _retrieved(summary, default)["by_length"] if default else {}
    rows = []
    for name in names:
        n = (_get(res, full, group, name) or _get(res, default, group, name) or {"n": 0})["n"]
        row = [
            name,
            str(n),
            _fmt(_get(res, full, group, name)),
            _fmt(_get(res, default, group, name)),
        ]
        row.append(_fmt(summary["gap"].get(group, {}).get(name), signed=True))
        if group == "by_length":
            row.append(_real(real.get(name)))
        row += [_fmt(_get(res, key, group, name)) for key, _ in _sweep_keys(summary)]
        rows.append(row)
    return rows


def _cell_rows(summary: dict[str, Any]) -> list[list[str]]:
    res, full, default = summary["results"], summary["full"], summary["default"]
    rows = []
    for task in summary["tasks"]:
        for length in map(str, summary["lengths"]):
            a = res[full]["cells"].get(task, {}).get(length) if full else None
            b = res[default]["cells"].get(task, {}).get(length) if default else None
            gap = summary["gap"].get("cells", {}).get(task, {}).get(length)
            n = (a or b or {"n": 0})["n"]
            rows.append([task, length, str(n), _fmt(a), _fmt(b), _fmt(gap, signed=True)])
    return rows


def _informative_lines(summary: dict[str, Any]) -> list[str]:
    info = summary.get("informative") or {}
    if not info.get("tasks") or "gap" not in info:
        return []
    full, retro = info["scores"][summary["full"]], info["scores"][summary["default"]]
    return [
        f"Over the {len(info['tasks'])} tasks where full attention scores at least "
        f"{info['min_full_score']:g} ({', '.join(info['tasks'])}): full {full:.1f}, "
        f"RetroInfer (default) {retro:.1f}, gap {info['gap']:+.1f}.",
        "",
    ]


def _mode_lines(meta: dict[str, Any]) -> list[str]:
    """Run-wide RetroInfer modes worth a line in the header."""
    config, lines = meta.get("config", {}), []
    if config.get("defer_misses"):
        lines.append(
            "- RetroInfer mode: defer_misses=True (a missed cluster is estimated in its step, "
            "exact from the next)"
        )
    if "centroid_format" in config:
        lines.append(f"- RetroInfer centroids: {config['centroid_format']}")
    return lines


def _header_lines(summary: dict[str, Any]) -> list[str]:
    """Title, model, device, commit, run size and how to read the numbers."""
    meta = summary["meta"]
    return [
        "# Accuracy: RetroInfer vs full attention",
        "",
        f"- model: {meta.get('model', '-')} ({meta.get('model_file', '-')}); "
        f"device: {meta.get('device', '-')}; commit: {meta.get('git_commit', '-')}",
        f"- tasks: {len(summary['tasks'])}; lengths: {', '.join(map(str, summary['lengths']))}; "
        f"samples: {summary['samples']} prompts x {len(summary['configs'])} configurations; "
        f"seed {meta.get('seed', '-')}",
        f"- dropped (unfinished) samples: {summary['dropped_incomplete_samples']}; "
        f"wall time: {meta.get('elapsed_s', '-')} s",
        *_mode_lines(meta),
        "- scores 0-100: RULER string match, partial credit for multi-answer tasks; "
        "averages are macro averages over tasks; gap = RetroInfer (default) minus full",
        "- retrieval budget: the nominal fraction of clusters; floor: min_retrieval_clusters; "
        "retrieved: the fraction of clusters really retrieved (mean over requests); sweep "
        "points run without a floor (the paper's rule)",
        "",
    ]


def markdown(summary: dict[str, Any]) -> str:
    """The report: summary, by task, by length, by task and length."""
    default_cfg = next((c for c in summary["configs"] if c["default"]), None)
    default_budget = _pct(default_cfg["budget"]) if default_cfg else "-"
    if default_cfg and default_cfg.get("floor"):
        default_budget += f", floor {default_cfg['floor']}"
    sweep_cols = [f"RetroInfer {label}" for _, label in _sweep_keys(summary)]
    head = ["full", f"RetroInfer ({default_budget})", "gap", *sweep_cols]
    length_head = ["full", f"RetroInfer ({default_budget})", "gap", "retrieved", *sweep_cols]
    lines = [
        *_header_lines(summary),
        "## Summary",
        "",
        *_table(
            [
                "configuration",
                "retrieval budget",
                "floor",
                "retrieved (by length)",
                "samples",
                "score",
                "vs full",
                "empty outputs",
            ],
            _summary_rows(summary),
        ),
        "",
        *_informative_lines(summary),
        "",
        "## By task (mean over lengths)",
        "",
        *_table(["task", "n", *head], _grouped_rows(summary, "by_task", summary["tasks"])),
        "",
        "## By context length (mean over tasks)",
        "",
        *_table(
            ["length", "n", *length_head],
            _grouped_rows(summary, "by_length", [str(n) for n in summary["lengths"]]),
        ),
        "",
        "## By task and length",
        "",
        *_table(
            ["task", "length", "n", "full", f"RetroInfer ({default_budget})", "gap"],
            _cell_rows(summary),
        ),
        "",
        *_mass_lines(summary),
    ]
    return "\n".join(lines)


def _mass_lines(summary: dict[str, Any]) -> list[str]:
    """The sampled attention mass per configuration and indexed layer (--mass-every)."""
    mass = summary.get("attention_mass") or {}
    if not mass:
        return []
    zones = ["steady", "retrieved", "estimated", "dropped"]
    rows = [
        [config, layer, str(z["samples"]), *(f"{z[name]:.3f}" for name in zones)]
        for config, layers in mass.items()
        for layer, z in layers.items()
    ]
    return [
        "## Where the attention mass fell (sampled, per indexed layer)",
        "",
        "Fraction of the exact softmax mass of the sampled decode steps on the keys each zone "
        "holds (steady and retrieved: attended exactly; estimated: from centroids; dropped: "
        "neither).",
        "",
        *_table(["configuration", "layer", "samples", *zones], rows),
        "",
    ]


def write(summary: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Writes `summary.json` and `report.md` under `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "summary.json", out / "report.md"
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    md_path.write_text(markdown(summary))
    return json_path, md_path
