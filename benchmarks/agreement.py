"""Teacher-forced agreement with full attention vs the retrieval-budget floor.

`python -m benchmarks.agreement [--lengths 3000 6000] [--forced 128]
    [--floors 0 16 24 32 48 64] [--windows 2]`

RetroInferConfig.min_retrieval_clusters puts a floor under n_ret = round(0.018 C): at the short
contexts this machine can run, 1.8% of the clusters is a handful (2-8). For each prompt length,
`--windows` prompts of real English prose (Python's pydoc topics, shipped with CPython; window 0
is the engine test's prompt) are read by the default model, then `--forced` further tokens are fed
one at a time (teacher forcing); agreement = fraction of steps whose greedy next-token prediction
equals full attention's (the baseline, run on the same prompts in the same run). Floor 0 is the
paper's pure-fraction rule. Prints one table and writes JSON (default
`results/agreement_<device>.json`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.deferred_misses import RESULTS, agree
from benchmarks.store import device_name as cpu_name
from inference_worker.engine import EngineConfig, GenerationEngine
from inference_worker.retroinfer import RetroInferConfig

log = logging.getLogger("benchmarks.agreement")
TARGET = 0.98  # issue 4: teacher-forced agreement with full attention
FIRST_START = 3000  # token offset of window 0 in the pydoc text (the engine test's prompt)
WINDOW_STRIDE = 16384  # token offset between windows


@dataclass(slots=True)
class Row:
    prompt_tokens: int
    window_start: int  # token offset of the prompt in the pydoc text
    forced_tokens: int
    min_retrieval_clusters: int
    num_clusters: int
    retrieval_clusters: int  # n_ret in effect
    estimation_clusters: int
    agreement_with_full: float


def pydoc_tokens(engine: GenerationEngine, start: int, length: int) -> list[int]:
    """`length` tokens of English prose from Python's pydoc topics, from token `start` on."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = engine.tokenizer.encode(text)
    if len(ids) < start + length:
        raise ValueError(f"pydoc topics hold {len(ids)} tokens, need {start + length}")
    return ids[start : start + length]


def clusters_at(config: RetroInferConfig, length: int) -> int:
    """C of a prompt of `length` tokens (what RetroInferLayer.prefill builds)."""
    n_seg = config.num_segments(length)
    clustered = length - min(config.sink_tokens, length) - config.window_tokens
    return config.num_clusters(clustered, n_seg) // n_seg * n_seg


def measure(
    engine: GenerationEngine, lengths: list[int], forced: int, floors: list[int], windows: int
) -> list[Row]:
    rows: list[Row] = []
    for length in lengths:
        for w in range(windows):
            start = FIRST_START + w * WINDOW_STRIDE
            tokens = pydoc_tokens(engine, start, length + forced)
            prompt, rest = tokens[:length], tokens[length:]
            full = engine.with_config(EngineConfig(attention="full")).forced_decode(prompt, rest)
            for floor in floors:
                config = RetroInferConfig(min_retrieval_clusters=floor)
                retro = engine.with_config(EngineConfig(retro=config)).forced_decode(prompt, rest)
                c = clusters_at(config, length)
                rows.append(
                    Row(
                        length,
                        start,
                        forced,
                        floor,
                        c,
                        config.retrieval_clusters(c),
                        config.estimation_clusters(c),
                        agree(retro, full),
                    )
                )
                log.info("%s", rows[-1])
    return rows


def pooled(rows: list[Row]) -> dict[tuple[int, int], float]:
    """(prompt length, floor) -> agreement over all windows' steps."""
    out: dict[tuple[int, int], list[float]] = {}
    for r in rows:
        out.setdefault((r.prompt_tokens, r.min_retrieval_clusters), []).append(
            r.agreement_with_full
        )
    return {k: sum(v) / len(v) for k, v in out.items()}


def smallest_passing(rows: list[Row]) -> int | None:
    """The smallest floor whose every window at every length reaches TARGET."""
    floors = sorted({r.min_retrieval_clusters for r in rows})
    for floor in floors:
        if all(r.agreement_with_full >= TARGET for r in rows if r.min_retrieval_clusters == floor):
            return floor
    return None


def print_table(rows: list[Row], device: str) -> None:
    print(f"teacher-forced next-token agreement with full attention, SmolLM2-135M, {device}")
    print("| prompt | window | forced | min_retrieval_clusters | C | n_ret | n_est | agreement |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.prompt_tokens} | {r.window_start} | {r.forced_tokens} | "
            f"{r.min_retrieval_clusters} | {r.num_clusters} | {r.retrieval_clusters} | "
            f"{r.estimation_clusters} | {r.agreement_with_full:.3f} |"
        )
    print("\npooled over windows:")
    for (length, floor), value in sorted(pooled(rows).items()):
        print(f"  prompt {length}, floor {floor}: {value:.3f}")
    print(f"smallest floor with every window >= {TARGET}: {smallest_passing(rows)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[3000, 6000])
    p.add_argument("--forced", type=int, default=128)
    p.add_argument("--floors", type=int, nargs="+", default=[0, 16, 24, 32, 48, 64])
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    engine = GenerationEngine.load(device=args.device)
    name = cpu_name()
    if engine.device.type == "cuda":
        name = f"{torch.cuda.get_device_name(engine.device)} + {name}"
    rows = measure(engine, args.lengths, args.forced, args.floors, args.windows)
    print_table(rows, name)
    out = args.out or RESULTS / f"agreement_{engine.device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {
        "device": name,
        "dtype": str(engine.loaded.dtype),
        "target": TARGET,
        "default_config": dataclasses.asdict(RetroInferConfig()),
        "smallest_passing_floor": smallest_passing(rows),
        "rows": [asdict(r) for r in rows],
    }
    out.write_text(json.dumps(summary, indent=1) + "\n")
    log.warning("wrote %s", out)


if __name__ == "__main__":
    main()
