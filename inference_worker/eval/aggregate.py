"""Aggregates scored records into the summary the reports are written from.

Averages are macro averages, as RULER reports them: a (task, length) cell is the mean over
its samples; a task's score is the mean of its cells over lengths; a length's score and the
overall score are means over tasks. Only samples that finished under every configuration
are counted, so the RetroInfer-minus-full gap always compares the same prompts.

Each RetroInfer configuration also carries the fraction of clusters it really retrieved
(mean over its records, overall and by length): with the retrieval floor this is far above
the nominal budget at short contexts (64 of ~120 clusters at 2K).
"""

from __future__ import annotations

from collections import defaultdict
from statistics import fmean
from typing import Any

Record = dict[str, Any]
INFORMATIVE_MIN_FULL = (
    10.0  # a task counts as informative where full attention scores at least this
)


def _sample_id(rec: Record) -> tuple[str, int, int]:
    return rec["task"], int(rec["length"]), int(rec["index"])


def configs_of(records: list[Record]) -> list[dict[str, Any]]:
    """Configurations in report order: full, RetroInfer default, then the sweep by budget."""
    found: dict[str, dict[str, Any]] = {}
    for rec in records:
        found.setdefault(
            rec["config"],
            {
                "key": rec["config"],
                "attention": rec["attention"],
                "budget": rec["budget"],
                "default": bool(rec["default"]),
                "floor": rec.get("min_retrieval_clusters"),
            },
        )
    return sorted(
        found.values(), key=lambda c: (c["attention"] != "full", not c["default"], c["budget"])
    )


def complete_records(records: list[Record]) -> tuple[list[Record], int]:
    """Records of samples that ran under every configuration, and how many samples were dropped."""
    keys = {r["config"] for r in records}
    seen: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    for rec in records:
        seen[_sample_id(rec)].add(rec["config"])
    complete = {sid for sid, cfgs in seen.items() if cfgs == keys}
    return [r for r in records if _sample_id(r) in complete], len(seen) - len(complete)


def _cells(records: list[Record]) -> dict[str, dict[str, dict[int, list[float]]]]:
    cells: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(lambda: defaultdict(dict))
    for rec in records:
        cells[rec["config"]][rec["task"]].setdefault(int(rec["length"]), []).append(
            float(rec["score"])
        )
    return cells


def _entry(score: float, n: int) -> dict[str, Any]:
    return {"score": round(score, 3), "n": n}


def _config_summary(by_cell: dict[str, dict[int, list[float]]]) -> dict[str, Any]:
    tasks = {t: fmean(fmean(v) for v in lens.values()) for t, lens in by_cell.items()}
    counts = {t: sum(len(v) for v in lens.values()) for t, lens in by_cell.items()}
    lengths: dict[int, list[float]] = defaultdict(list)
    length_n: dict[int, int] = defaultdict(int)
    for lens in by_cell.values():
        for n, scores in lens.items():
            lengths[n].append(fmean(scores))
            length_n[n] += len(scores)
    return {
        "overall": _entry(fmean(tasks.values()), sum(counts.values())),
        "by_task": {t: _entry(s, counts[t]) for t, s in tasks.items()},
        "by_length": {str(n): _entry(fmean(v), length_n[n]) for n, v in sorted(lengths.items())},
        "cells": {
            t: {str(n): _entry(fmean(v), len(v)) for n, v in sorted(lens.items())}
            for t, lens in by_cell.items()
        },
    }


def _retrieved(records: list[Record]) -> dict[str, Any]:
    """Mean real retrieved fraction of one configuration, overall and by length (None when
    the records carry none: full attention, prompts below the index threshold, old runs)."""
    by_length: dict[int, list[float]] = defaultdict(list)
    for rec in records:
        if rec.get("retrieved_fraction") is not None:
            by_length[int(rec["length"])].append(float(rec["retrieved_fraction"]))
    values = [v for vs in by_length.values() for v in vs]
    return {
        "overall": round(fmean(values), 5) if values else None,
        "by_length": {str(n): round(fmean(v), 5) for n, v in sorted(by_length.items())},
    }


MASS_ZONES = ("steady", "retrieved", "estimated", "dropped")


def _attention_mass(records: list[Record]) -> dict[str, Any]:
    """Per configuration and indexed layer: the sampled attention mass per zone (the engine's
    `attention_mass` stats, `--mass-every`), weighted by samples. Empty when not sampled."""
    sums: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for rec in records:
        for layer, zones in (rec.get("stats") or {}).get("attention_mass", {}).items():
            n = int(zones["samples"])
            acc = sums[rec["config"]].setdefault(layer, [0.0] * (len(MASS_ZONES) + 1))
            acc[0] += n
            for i, zone in enumerate(MASS_ZONES):
                acc[i + 1] += float(zones[zone]) * n
    return {
        config: {
            layer: {"samples": int(acc[0])}
            | {z: round(acc[i + 1] / acc[0], 5) for i, z in enumerate(MASS_ZONES)}
            for layer, acc in sorted(layers.items(), key=lambda kv: int(kv[0]))
        }
        for config, layers in sums.items()
    }


def _diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Recursive `a - b` over matching summary entries."""
    if "score" in a and "score" in b:
        return {"score": round(a["score"] - b["score"], 3), "n": a["n"]}
    return {
        k: _diff(a[k], b[k]) for k in a if k in b and isinstance(a[k], dict) and k != "retrieved"
    }


def summarize(records: list[Record], meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The full summary: per config, per task, per length, per cell; gap; budget sweep."""
    used, dropped = complete_records(records)
    configs = configs_of(used)
    cells = _cells(used)
    per_config = {c["key"]: _config_summary(cells[c["key"]]) for c in configs}
    for c in configs:
        per_config[c["key"]]["retrieved"] = _retrieved([r for r in used if r["config"] == c["key"]])
    full = next((c["key"] for c in configs if c["attention"] == "full"), None)
    default = next((c["key"] for c in configs if c["default"]), None)
    gap = _diff(per_config[default], per_config[full]) if full and default else {}
    sweep = [
        {
            "budget": c["budget"],
            "config": c["key"],
            "default": c["default"],
            "floor": c["floor"],
            "retrieved": per_config[c["key"]]["retrieved"],
            **per_config[c["key"]]["overall"],
            "by_task": per_config[c["key"]]["by_task"],
            "by_length": per_config[c["key"]]["by_length"],
        }
        for c in configs
        if c["attention"] != "full"
    ]
    return {
        "informative": _informative(per_config, full, default),
        "empty_outputs": _empty_outputs(used),
        "meta": dict(meta or {}),
        "samples": len({_sample_id(r) for r in used}),
        "dropped_incomplete_samples": dropped,
        "tasks": sorted({r["task"] for r in used}, key=_task_order(used)),
        "lengths": sorted({int(r["length"]) for r in used}),
        "configs": configs,
        "full": full,
        "default": default,
        "results": per_config,
        "gap": gap,
        "sweep": sorted(sweep, key=lambda s: s["budget"]),
        "attention_mass": _attention_mass(used),
    }


def _empty_outputs(records: list[Record]) -> dict[str, int]:
    """Per configuration, outputs with no visible text (e.g. only special tokens): a sign
    of a broken attention path rather than of a wrong answer."""
    counts: dict[str, int] = defaultdict(int)
    for rec in records:
        counts[rec["config"]] += 0 if rec["prediction"].strip() else 1
    return dict(counts)


def _informative(
    per_config: dict[str, Any], full: str | None, default: str | None
) -> dict[str, Any]:
    """Averages over the tasks full attention can do at all: a small model scores 0 on some
    tasks under any attention, which would pull the gap towards 0."""
    if full is None:
        return {}
    by_task = per_config[full]["by_task"]
    tasks = [t for t, e in by_task.items() if e["score"] >= INFORMATIVE_MIN_FULL]
    out: dict[str, Any] = {"min_full_score": INFORMATIVE_MIN_FULL, "tasks": tasks, "scores": {}}
    if tasks:
        for key, summary in per_config.items():
            out["scores"][key] = round(fmean(summary["by_task"][t]["score"] for t in tasks), 3)
        if default is not None:
            out["gap"] = round(out["scores"][default] - out["scores"][full], 3)
    return out


def _task_order(records: list[Record]) -> Any:
    first: dict[str, int] = {}
    for i, rec in enumerate(records):
        first.setdefault(rec["task"], i)
    return lambda task: first[task]
