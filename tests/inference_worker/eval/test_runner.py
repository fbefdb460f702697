"""Runner, configuration and CLI parsing.

The runner tests drive a stand-in engine written against the engine's public API (the
real request/result types), because what they check is the runner's bookkeeping: which
requests go out under which configuration, and how results become scored records. The
real engine end to end is `test_engine_link.py` (slow).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from inference_worker.engine.types import GenerationRequest, GenerationResult
from inference_worker.eval.cli import build_parser, config_from_args
from inference_worker.eval.config import EvalConfig, parse_store, quick_config
from inference_worker.eval.prompt import Sample
from inference_worker.eval.runner import SuiteRunner, load_records, run_specs
from inference_worker.retroinfer import RetroInferConfig


def _sample(i: int) -> Sample:
    return Sample("passkey", 2048, i, [5] * 2048, [f"{10000 + i}"], "all", 12, 0.5)


@dataclass
class AnsweringEngine:
    """Answers right under full attention and budgets >= 1%, wrong below."""

    answers: dict[str, str]
    calls: list[tuple[list[str], str, Any, Any]] = field(default_factory=list)

    def generate(
        self,
        requests: list[GenerationRequest],
        attention: str = "retroinfer",
        retro_config: Any = None,
        store: Any = None,
    ) -> list[GenerationResult]:
        self.calls.append(([r.id for r in requests], attention, retro_config, store))
        budget = retro_config["retrieval_budget"] if retro_config else 1.0
        out = []
        for r in requests:
            sample_id = r.id.rsplit("/", 1)[0]
            text = f" {self.answers[sample_id]}. Remember it." if budget >= 0.01 else " 99999."
            stats = {"prefill_s": 0.5, "hits": torch.tensor(3), "big": torch.zeros(4)}
            out.append(GenerationResult(r.id, text, [1, 2, 3], stats))
        return out


def _runner(engine: AnsweringEngine, path: Path | None = None, batch_size: int = 1) -> SuiteRunner:
    return SuiteRunner(
        engine,
        run_specs(0.018, [0.005, 0.018, 0.1]),
        lambda s, rid, n: GenerationRequest(id=rid, prompt=list(s.token_ids), max_new_tokens=n),
        lambda budget: {"retrieval_budget": 0.018 if budget is None else budget},
        default_budget=0.018,
        store="store-link",
        batch_size=batch_size,
        records_path=path,
        progress=False,
    )


def test_run_specs_full_default_then_sweep_without_duplicates() -> None:
    specs = run_specs(0.018, [0.1, 0.005, 0.01, 0.018, 0.04])
    assert [s.key for s in specs] == [
        "full",
        "retro@0.018",
        "retro@0.005",
        "retro@0.01",
        "retro@0.04",
        "retro@0.1",
    ]
    assert [s.default for s in specs] == [False, True, False, False, False, False]
    assert specs[0].attention == "full" and specs[1].budget is None


def test_every_sample_runs_under_every_configuration(tmp_path: Path) -> None:
    samples = [_sample(i) for i in range(3)]
    engine = AnsweringEngine({s.id: s.answers[0] for s in samples})
    records = _runner(engine, tmp_path / "records.jsonl", batch_size=2).run(samples)
    assert len(records) == 3 * 4
    assert [len(ids) for ids, *_ in engine.calls] == [2, 2, 2, 2, 1, 1, 1, 1]
    assert all(store == "store-link" for *_, store in engine.calls)
    assert engine.calls[0][1:3] == ("full", None)
    assert engine.calls[1][1:3] == ("retroinfer", {"retrieval_budget": 0.018})
    by_config = {r.config: r for r in records if r.index == 0}
    assert by_config["full"].score == 100.0 and by_config["retro@0.005"].score == 0.0
    assert by_config["retro@0.018"].default and by_config["retro@0.018"].budget == 0.018
    assert by_config["full"].budget == 0.0 and by_config["full"].output_ids == [1, 2, 3]
    assert by_config["full"].stats == {"prefill_s": 0.5, "hits": 3}  # tensors reduced/dropped
    lines = load_records(tmp_path / "records.jsonl")
    assert len(lines) == 12 and json.dumps(lines[0])


def test_batches_hold_equal_length_samples_only() -> None:
    samples = [_sample(0), _sample(1), _sample(2)]
    samples[1].length = 1024
    engine = AnsweringEngine({s.id: s.answers[0] for s in samples})
    _runner(engine, batch_size=8).run(samples)
    assert [len(ids) for ids, *_ in engine.calls][::4] == [1, 1, 1]


def test_resume_skips_finished_pairs() -> None:
    samples = [_sample(i) for i in range(2)]
    engine = AnsweringEngine({s.id: s.answers[0] for s in samples})
    done = {(samples[0].id, key) for key in ("full", "retro@0.018", "retro@0.005", "retro@0.1")}
    done.add((samples[1].id, "full"))
    records = _runner(engine).run(samples, done)
    assert sorted(r.config for r in records) == ["retro@0.005", "retro@0.018", "retro@0.1"]


def test_engine_returning_wrong_count_is_an_error() -> None:
    class Short(AnsweringEngine):
        def generate(
            self,
            requests: list[GenerationRequest],
            attention: str = "retroinfer",
            retro_config: Any = None,
            store: Any = None,
        ) -> list[GenerationResult]:
            return super().generate(requests, attention, retro_config, store)[:-1]

    samples = [_sample(0), _sample(1)]
    with pytest.raises(RuntimeError, match="1 results for 2 requests"):
        _runner(Short({s.id: "1" for s in samples}), batch_size=2).run(samples)


def test_config_validation_quotes_values() -> None:
    with pytest.raises(ValueError, match="'bogus'"):
        EvalConfig(tasks=("bogus",))
    with pytest.raises(ValueError, match=r"1\.5"):
        EvalConfig(budgets=(1.5,))
    with pytest.raises(ValueError, match="samples must be >= 1, got 0"):
        EvalConfig(samples=0)
    with pytest.raises(ValueError, match="'localhost'"):
        EvalConfig(store="localhost")
    assert parse_store("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert parse_store("[::1]:7") == ("[::1]", 7)


def test_cli_options_build_the_config(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        [
            "--tasks",
            "passkey,vt",
            "--lengths",
            "1K,7.5K,3000",
            "--budgets",
            "0.5%,0.04",
            "--samples",
            "2",
            "--seed",
            "9",
            "--store",
            "127.0.0.1:5000",
            "--out",
            str(tmp_path),
        ]
    )
    config = config_from_args(args)
    assert config.tasks == ("passkey", "vt") and config.lengths == (1024, 7680, 3000)
    assert config.budgets == (0.005, 0.04) and config.samples == 2 and config.seed == 9
    assert config.store == "127.0.0.1:5000" and config.out == tmp_path
    quick = config_from_args(build_parser().parse_args(["--quick", "--no-sweep"]))
    assert quick.budgets == () and quick.tasks == quick_config().tasks
    assert (
        config_from_args(build_parser().parse_args(["--tasks", "all"])).tasks == EvalConfig().tasks
    )


def test_cli_rejects_bad_values() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--lengths", "two"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--budgets", "x%"])


def test_sweep_points_use_the_pure_fraction_and_the_default_keeps_the_floor() -> None:
    from inference_worker.eval import engine_link

    default = engine_link.retro_config(None)
    point = engine_link.retro_config(0.005)
    assert default.min_retrieval_clusters == 64 and default.retrieval_budget == 0.018
    assert point.min_retrieval_clusters == 0 and point.retrieval_budget == 0.005
    # C = 440 clusters (a ~7K-token prompt): the floor would make 0.5% and 1.8% identical
    assert point.retrieval_clusters(440) == 2 and default.retrieval_clusters(440) == 64


def test_defer_misses_flag_reaches_every_retroinfer_config() -> None:
    from inference_worker.eval import cli, engine_link, report

    parser = cli.build_parser()
    assert cli.config_from_args(parser.parse_args(["--quick", "--defer-misses"])).defer_misses
    assert not cli.config_from_args(parser.parse_args(["--quick"])).defer_misses
    assert engine_link.retro_config(None, defer_misses=True).defer_misses
    assert engine_link.retro_config(0.01, defer_misses=True).defer_misses
    assert not engine_link.retro_config(0.01).defer_misses
    assert "defer_misses=True" in report._mode_lines({"config": {"defer_misses": True}})[0]
    assert report._mode_lines({"config": {"defer_misses": False}}) == []


def test_centroids_flag_reaches_every_retroinfer_config() -> None:
    from inference_worker.eval import cli, engine_link, report

    parser = cli.build_parser()
    args = parser.parse_args(["--quick", "--centroids", "fp8_e4m3"])
    assert cli.config_from_args(args).centroid_format == "fp8_e4m3"
    default = RetroInferConfig().centroid_format
    assert cli.config_from_args(parser.parse_args(["--quick"])).centroid_format == default
    assert EvalConfig().centroid_format == default
    for budget in (None, 0.01):
        cfg = engine_link.retro_config(budget, centroid_format="fp8_e4m3")
        assert cfg.centroid_format == "fp8_e4m3"
    assert engine_link.retro_config(0.01).centroid_format == default
    lines = report._mode_lines({"config": {"centroid_format": "fp8_e4m3"}})
    assert lines == ["- RetroInfer centroids: fp8_e4m3"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--centroids", "fp4"])
