"""Runs every sample through one engine under every attention configuration.

Order: samples are taken `batch_size` at a time and each batch runs under every
configuration before the next batch starts, so an interrupted run still holds paired
(full vs RetroInfer) results. Each finished request is appended to `records.jsonl` and
logged on one line (sample, length, configuration, score, seconds, elapsed); a progress bar
is drawn too when stderr is a terminal.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from inference_worker.eval.prompt import Sample
from inference_worker.eval.scoring import score

log = logging.getLogger(__name__)

RequestFactory = Callable[[Sample, str, int], Any]
DEFAULT_KEY = "retro@default"


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One attention configuration every sample runs under."""

    key: str  # "full", "retro@default", or "retro@<budget>" (a sweep point)
    attention: str  # "full" | "retroinfer"
    budget: float | None  # retrieval budget; None: full attention, or the default's
    default: bool = False  # RetroInfer as users get it (default budgets and floor)
    floor: int | None = None  # min_retrieval_clusters; None: full, or the config's default


RetroConfigFactory = Callable[[RunSpec], Any]


def run_specs(
    default_budget: float, budgets: Iterable[float], default_floor: int, full_only: bool = False
) -> list[RunSpec]:
    """Full attention, RetroInfer default (budget and floor as configured), then the sweep:
    each budget with no floor (the paper's rule). A sweep point equal to the default run
    (default budget, floor 0) is not run twice."""
    specs = [RunSpec("full", "full", None)]
    if full_only:
        return specs
    specs.append(RunSpec(DEFAULT_KEY, "retroinfer", None, True, default_floor))
    seen = {round(default_budget, 6)} if default_floor == 0 else set()
    for budget in sorted(budgets):
        if round(budget, 6) not in seen:
            seen.add(round(budget, 6))
            specs.append(RunSpec(spec_key(budget), "retroinfer", budget, floor=0))
    return specs


def spec_key(budget: float) -> str:
    return f"retro@{budget:g}"


@dataclass(slots=True)
class Record:
    """The outcome of one sample under one configuration."""

    task: str
    length: int
    index: int
    depth: float | None
    config: str
    attention: str
    budget: float  # retrieval budget in effect (the default one for the default run); 0 for full
    min_retrieval_clusters: int | None  # the retrieval floor in effect; None for full
    retrieved_fraction: float | None  # clusters retrieved exactly / clusters (what the floor
    # makes of the budget); None for full attention or a prompt too short to index
    default: bool
    score: float
    prediction: str
    answers: list[str]
    metric: str
    prompt_tokens: int
    new_tokens: int
    output_ids: list[int]  # generated token ids (special tokens decode to nothing)
    seconds: float  # wall time of the generate call, divided by its batch size
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A JSON-safe copy of engine stats: scalars, short lists, nested dicts; else dropped."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if isinstance(value, dict) and depth < 3:
        out = {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not None or value.get(k) is None}
    if isinstance(value, list | tuple) and len(value) <= 64 and depth < 3:
        return [_jsonable(v, depth + 1) for v in value]
    return None


def load_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open() as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclass(slots=True)
class SuiteRunner:
    """Drives `engine.generate` over samples x specs and collects scored records."""

    engine: Any
    specs: list[RunSpec]
    make_request: RequestFactory
    make_retro_config: RetroConfigFactory
    retrieved_fraction: Callable[[dict[str, Any]], float | None]  # from a result's stats
    default_budget: float
    default_floor: int
    store: Any = None
    batch_size: int = 1
    max_new_tokens: int | None = None
    records_path: Path | None = None
    progress: bool = True

    def run(self, samples: list[Sample], done: set[tuple[str, str]] | None = None) -> list[Record]:
        """Run every (sample, spec) pair not in `done` ({(sample.id, spec.key)})."""
        done = done or set()
        todo = [(s, spec) for s in samples for spec in self.specs if (s.id, spec.key) not in done]
        records: list[Record] = []
        started = time.perf_counter()
        tty = self.progress and sys.stderr.isatty()
        with (
            logging_redirect_tqdm(),
            tqdm(total=len(todo), disable=not tty, desc="eval", unit="req") as bar,
        ):
            for batch in self._batches(samples):
                for spec in self.specs:
                    pending = [s for s in batch if (s.id, spec.key) not in done]
                    if pending:
                        new = self._run_batch(pending, spec)
                        records.extend(new)
                        self._append(new)
                        self._log(new, len(records), len(todo), started)
                        bar.update(len(new))
                        bar.set_postfix_str(_running_means(records))
        return records

    def _log(self, new: list[Record], finished: int, total: int, started: float) -> None:
        """One line per request: which sample, its length, configuration, score and times."""
        if not self.progress:
            return
        elapsed = time.perf_counter() - started
        for i, rec in enumerate(new):
            log.info(
                "[%d/%d] %s/%d/%d %s: %d tokens, score %.0f, %.1f s, elapsed %.0f s",
                finished - len(new) + i + 1,
                total,
                rec.task,
                rec.length,
                rec.index,
                rec.config,
                rec.prompt_tokens,
                rec.score,
                rec.seconds,
                elapsed,
            )

    def _batches(self, samples: list[Sample]) -> list[list[Sample]]:
        """Runs of consecutive equal-length samples, at most `batch_size` each (the engine
        batches equal-length prompts together)."""
        batches: list[list[Sample]] = []
        for sample in samples:
            last = batches[-1] if batches else None
            if last and len(last) < self.batch_size and last[0].length == sample.length:
                last.append(sample)
            else:
                batches.append([sample])
        return batches

    def _run_batch(self, batch: list[Sample], spec: RunSpec) -> list[Record]:
        requests = [self.make_request(s, f"{s.id}/{spec.key}", self._new_tokens(s)) for s in batch]
        retro = None if spec.attention == "full" else self.make_retro_config(spec)
        started = time.perf_counter()
        results = self.engine.generate(
            requests, attention=spec.attention, retro_config=retro, store=self.store
        )
        seconds = (time.perf_counter() - started) / len(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"engine returned {len(results)} results for {len(batch)} requests")
        return [self._record(s, spec, r, seconds) for s, r in zip(batch, results, strict=True)]

    def _new_tokens(self, sample: Sample) -> int:
        cap = self.max_new_tokens
        return sample.max_new_tokens if cap is None else min(cap, sample.max_new_tokens)

    def _record(self, sample: Sample, spec: RunSpec, result: Any, seconds: float) -> Record:
        text = str(result.text)
        budget = self.default_budget if spec.budget is None else spec.budget
        floor = self.default_floor if spec.floor is None else spec.floor
        full = spec.attention == "full"
        stats = dict(result.stats or {})
        return Record(
            task=sample.task,
            length=sample.length,
            index=sample.index,
            depth=sample.depth,
            config=spec.key,
            attention=spec.attention,
            budget=0.0 if full else budget,
            min_retrieval_clusters=None if full else floor,
            retrieved_fraction=None if full else self.retrieved_fraction(stats),
            default=spec.default,
            score=score(text, sample.answers, sample.metric),
            prediction=text,
            answers=list(sample.answers),
            metric=sample.metric,
            prompt_tokens=len(sample.token_ids),
            new_tokens=len(result.token_ids),
            output_ids=[int(t) for t in result.token_ids],
            seconds=round(seconds, 4),
            stats=_jsonable(stats),
        )

    def _append(self, records: list[Record]) -> None:
        if self.records_path is None:
            return
        self.records_path.parent.mkdir(parents=True, exist_ok=True)
        with self.records_path.open("a") as fh:
            for rec in records:
                fh.write(json.dumps(rec.to_dict()) + "\n")


def _running_means(records: list[Record]) -> str:
    full = [r.score for r in records if r.attention == "full"]
    retro = [r.score for r in records if r.default]
    parts = []
    if full:
        parts.append(f"full={sum(full) / len(full):.1f}")
    if retro:
        parts.append(f"retro={sum(retro) / len(retro):.1f}")
    return " ".join(parts)
