"""Accuracy of deferred misses (RetroInferConfig.defer_misses) vs the default, teacher-forced.

`python -m benchmarks.deferred_misses [--lengths 2048 4096] [--forced 64]`

The default model reads natural prose (the eval suite's essay haystack) of each length, then
`--forced` further tokens are fed one at a time (teacher forcing). For every step we compare the
greedy next-token prediction with full attention's; agreement = fraction of equal predictions.
Rows: RetroInfer default (misses exact, waited for) and deferred (a missed cluster is estimated
in the step it misses and exact from the next step on), same prompts, same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.store import device_name as cpu_name
from inference_worker.engine import EngineConfig, GenerationEngine
from inference_worker.eval.haystack import make
from inference_worker.retroinfer import RetroInferConfig

log = logging.getLogger("benchmarks.deferred_misses")
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(slots=True)
class Row:
    prompt_tokens: int
    forced_tokens: int
    mode: str
    agreement_with_full: float
    agreement_with_default: float


def essay(engine: GenerationEngine, length: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    ids: list[int] = list(engine.tokenizer.encode(""))[:1]
    for piece in make("essay", rng):
        ids.extend(engine.tokenizer.encode(piece, add_special_tokens=False))
        if len(ids) >= length:
            return ids[:length]
    raise RuntimeError("the essay stream ended")


def agree(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--forced", type=int, default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    engine = GenerationEngine.load(device=args.device)
    name = cpu_name()
    if engine.device.type == "cuda":
        name = f"{torch.cuda.get_device_name(engine.device)} + {name}"
    rows: list[Row] = []
    for length in args.lengths:
        tokens = essay(engine, length + args.forced, seed=length)
        prompt, forced = tokens[:length], tokens[length:]
        full = engine.with_config(EngineConfig(attention="full")).forced_decode(prompt, forced)
        default = engine.with_config(EngineConfig()).forced_decode(prompt, forced)
        deferred_config = EngineConfig(retro=RetroInferConfig(defer_misses=True))
        deferred = engine.with_config(deferred_config).forced_decode(prompt, forced)
        rows.append(Row(length, args.forced, "default", agree(default, full), 1.0))
        rows.append(
            Row(
                length, args.forced, "defer_misses", agree(deferred, full), agree(deferred, default)
            )
        )
    print(f"teacher-forced next-token agreement, SmolLM2-135M, {name}")
    print("| prompt | forced | mode | agreement with full | agreement with default |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.prompt_tokens} | {r.forced_tokens} | {r.mode} | {r.agreement_with_full:.3f} | "
            f"{r.agreement_with_default:.3f} |"
        )
    out = args.out or RESULTS / f"deferred_misses_{engine.device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": name, "rows": [asdict(r) for r in rows]}, indent=1))
    log.warning("wrote %s", out)


if __name__ == "__main__":
    main()
