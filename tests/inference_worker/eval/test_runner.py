"""Runner, configuration and CLI parsing.

The runner tests drive a stand-in engine written against the engine's public API (the
real request/result types), because what they check is the runner's bookkeeping: which
requests go out under which configuration, and how results become scored records. The
real engine end to end is `test_engine_link.py` (slow).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from inference_worker.engine.types import GenerationRequest, GenerationResult
from inference_worker.eval import engine_link
from inference_worker.eval.cli import build_parser, check_context, config_from_args, git_commit
from inference_worker.eval.config import (
    GEMMA_LENGTHS,
    EvalConfig,
    gemma_config,
    parse_store,
    quick_config,
)
from inference_worker.eval.prompt import Sample
from inference_worker.eval.runner import RunSpec, SuiteRunner, load_records, run_specs
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
            if retro_config:  # the floor of 64 of 128 clusters, or the budget's share
                n_ret = max(round(budget * 128), retro_config["floor"], 1)
                stats.update(num_clusters=128, retrieval_clusters=n_ret)
            out.append(GenerationResult(r.id, text, [1, 2, 3], stats))
        return out


def _runner(
    engine: AnsweringEngine, path: Path | None = None, batch_size: int = 1, progress: bool = False
) -> SuiteRunner:
    return SuiteRunner(
        engine,
        run_specs(0.018, [0.005, 0.018, 0.1], default_floor=64),
        lambda s, rid, n: GenerationRequest(id=rid, prompt=list(s.token_ids), max_new_tokens=n),
        lambda spec: {
            "retrieval_budget": 0.018 if spec.budget is None else spec.budget,
            "floor": 64 if spec.floor is None else spec.floor,
        },
        engine_link.retrieved_fraction,
        default_budget=0.018,
        default_floor=64,
        store="store-link",
        batch_size=batch_size,
        records_path=path,
        progress=progress,
    )


def test_run_specs_full_default_then_sweep_without_floor() -> None:
    specs = run_specs(0.018, [0.1, 0.005, 0.01, 0.018, 0.04], default_floor=64)
    assert [s.key for s in specs] == [
        "full",
        "retro@default",
        "retro@0.005",
        "retro@0.01",
        "retro@0.018",  # the paper's rule beside the floored default
        "retro@0.04",
        "retro@0.1",
    ]
    assert [s.default for s in specs] == [False, True, False, False, False, False, False]
    assert [s.floor for s in specs] == [None, 64, 0, 0, 0, 0, 0]
    assert specs[0].attention == "full" and specs[1].budget is None
    paper = run_specs(0.018, [0.005, 0.018], default_floor=0)  # the default is the paper's
    assert [s.key for s in paper] == ["full", "retro@default", "retro@0.005"]
    assert [s.key for s in run_specs(0.018, [0.005], 64, full_only=True)] == ["full"]


def test_every_sample_runs_under_every_configuration(tmp_path: Path) -> None:
    samples = [_sample(i) for i in range(3)]
    engine = AnsweringEngine({s.id: s.answers[0] for s in samples})
    records = _runner(engine, tmp_path / "records.jsonl", batch_size=2).run(samples)
    assert len(records) == 3 * 5
    assert [len(ids) for ids, *_ in engine.calls] == [2] * 5 + [1] * 5
    assert all(store == "store-link" for *_, store in engine.calls)
    assert engine.calls[0][1:3] == ("full", None)
    assert engine.calls[1][1:3] == ("retroinfer", {"retrieval_budget": 0.018, "floor": 64})
    by_config = {r.config: r for r in records if r.index == 0}
    assert by_config["full"].score == 100.0 and by_config["retro@0.005"].score == 0.0
    default, paper = by_config["retro@default"], by_config["retro@0.018"]
    assert default.default and default.budget == 0.018 and default.min_retrieval_clusters == 64
    assert default.retrieved_fraction == 0.5  # 64 of 128 clusters: the floor, not 1.8%
    assert not paper.default and paper.min_retrieval_clusters == 0
    assert paper.retrieved_fraction == 2 / 128
    full = by_config["full"]
    assert full.budget == 0.0 and full.output_ids == [1, 2, 3]
    assert full.min_retrieval_clusters is None and full.retrieved_fraction is None
    assert full.stats == {"prefill_s": 0.5, "hits": 3}  # tensors reduced/dropped
    lines = load_records(tmp_path / "records.jsonl")
    assert len(lines) == 15 and json.dumps(lines[0])


def test_every_request_is_logged_on_one_line(caplog: pytest.LogCaptureFixture) -> None:
    samples = [_sample(i) for i in range(2)]
    engine = AnsweringEngine({s.id: s.answers[0] for s in samples})
    with caplog.at_level(logging.INFO, logger="inference_worker.eval.runner"):
        _runner(engine, progress=True).run(samples)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 * 5
    pattern = (
        r"\[3/10\] passkey/2048/0 retro@0\.005: 2048 tokens, score 0, \d+\.\d s, elapsed \d+ s"
    )
    assert re.fullmatch(pattern, lines[2]), lines[2]


def test_batches_hold_equal_length_samples_only() -> None:
    samples = [_sample(0), _sample(1), _sample(2)]
    samples[1].length = 1024
    engine = AnsweringEngine({s.id: s.answers[0] for s in samples})
    _runner(engine, batch_size=8).run(samples)
    assert [len(ids) for ids, *_ in engine.calls] == [1] * 3 * 5  # 3 batches x 5 configurations


def test_resume_skips_finished_pairs() -> None:
    samples = [_sample(i) for i in range(2)]
    engine = AnsweringEngine({s.id: s.answers[0] for s in samples})
    keys = ("full", "retro@default", "retro@0.005", "retro@0.018", "retro@0.1")
    done = {(samples[0].id, key) for key in keys}
    done.add((samples[1].id, "full"))
    records = _runner(engine).run(samples, done)
    assert sorted(r.config for r in records) == sorted(keys[1:])


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
    with pytest.raises(ValueError, match="min_retrieval_clusters must be >= 0, got -1"):
        EvalConfig(min_retrieval_clusters=-1)
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
    assert config_from_args(build_parser().parse_args(["--preset", "quick"])) == quick_config()


def test_gemma_preset_and_model_names() -> None:
    parse = build_parser().parse_args
    gemma = config_from_args(parse(["--preset", "gemma"]))
    assert gemma == gemma_config() and gemma.model == "gemma3-270m"
    assert gemma.lengths == GEMMA_LENGTHS == (4096, 8192, 16384, 32640)
    assert gemma.tasks == EvalConfig().tasks and gemma.budgets == EvalConfig().budgets
    assert str(gemma.out) == "eval-results/gemma"  # relative to the working directory
    assert EvalConfig().model == "smollm2-135m"
    assert config_from_args(parse(["--quick", "--model", "gemma3-270m"])).model == "gemma3-270m"
    floor = config_from_args(parse(["--min-retrieval-clusters", "0", "--full-only"]))
    assert floor.min_retrieval_clusters == 0 and floor.full_only
    with pytest.raises(SystemExit):
        parse(["--preset", "huge"])


def test_prompts_that_cannot_fit_the_context_stop_the_run_first() -> None:
    assert engine_link.context_length("smollm2-135m") == 8192  # from the GGUF metadata alone
    check_context(gemma_config(), 32768)  # 32,640 + 96 answer tokens fit
    with pytest.raises(SystemExit, match=r"32768 \+ 96 answer tokens exceed the context of gemma"):
        check_context(gemma_config(lengths=(32768,)), 32768)


def test_git_commit_names_this_checkout() -> None:
    assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", git_commit())


def test_cli_rejects_bad_values() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--lengths", "two"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--budgets", "x%"])


DEFAULT = RunSpec("retro@default", "retroinfer", None, True)
POINT = RunSpec("retro@0.005", "retroinfer", 0.005, floor=0)


def test_sweep_points_use_the_pure_fraction_and_the_default_keeps_the_floor() -> None:
    default = engine_link.retro_config(DEFAULT)
    point = engine_link.retro_config(POINT)
    assert default.min_retrieval_clusters == 64 and default.retrieval_budget == 0.018
    assert point.min_retrieval_clusters == 0 and point.retrieval_budget == 0.005
    # C = 440 clusters (a ~7K-token prompt): the floor would make 0.5% and 1.8% identical
    assert point.retrieval_clusters(440) == 2 and default.retrieval_clusters(440) == 64
    paper = engine_link.retro_config(RunSpec("retro@default", "retroinfer", None, True, 0))
    assert paper.min_retrieval_clusters == 0 and paper.retrieval_budget == 0.018
    assert engine_link.default_retrieval_floor() == 64


def test_retrieved_fraction_from_stats() -> None:
    assert (
        engine_link.retrieved_fraction({"retrieval_clusters": 64, "num_clusters": 120}) == 64 / 120
    )
    assert engine_link.retrieved_fraction({"retrieved_fraction": 0.25, "num_clusters": 9}) == 0.25
    assert engine_link.retrieved_fraction({"attention": "retroinfer", "num_clusters": 0}) is None
    assert engine_link.retrieved_fraction({}) is None


def test_defer_misses_flag_reaches_every_retroinfer_config() -> None:
    from inference_worker.eval import cli, report

    parser = cli.build_parser()
    assert cli.config_from_args(parser.parse_args(["--quick", "--defer-misses"])).defer_misses
    assert not cli.config_from_args(parser.parse_args(["--quick"])).defer_misses
    assert engine_link.retro_config(DEFAULT, defer_misses=True).defer_misses
    assert engine_link.retro_config(POINT, defer_misses=True).defer_misses
    assert not engine_link.retro_config(POINT).defer_misses
    assert "defer_misses=True" in report._mode_lines({"config": {"defer_misses": True}})[0]
    assert report._mode_lines({"config": {"defer_misses": False}}) == []


def test_centroids_flag_reaches_every_retroinfer_config() -> None:
    from inference_worker.eval import cli, report

    parser = cli.build_parser()
    args = parser.parse_args(["--quick", "--centroids", "fp8_e4m3"])
    assert cli.config_from_args(args).centroid_format == "fp8_e4m3"
    default = RetroInferConfig().centroid_format
    assert cli.config_from_args(parser.parse_args(["--quick"])).centroid_format == default
    assert EvalConfig().centroid_format == default
    for spec in (DEFAULT, POINT):
        cfg = engine_link.retro_config(spec, centroid_format="fp8_e4m3")
        assert cfg.centroid_format == "fp8_e4m3"
    assert engine_link.retro_config(POINT).centroid_format == default
    lines = report._mode_lines({"config": {"centroid_format": "fp8_e4m3"}})
    assert lines == ["- RetroInfer centroids: fp8_e4m3"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--centroids", "fp4"])
