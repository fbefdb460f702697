"""inference_worker.settings: flags over WAVEKV_* variables over defaults, byte sizes with
units, and one-line errors that name the flag or variable and quote the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_worker.settings import (
    ClusterSettings,
    JobSettings,
    ServeSettings,
    SettingsError,
    WorkerMetricsSettings,
    load,
)


def test_flags_win_over_the_environment_which_wins_over_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load(ServeSettings).port == 8000
    monkeypatch.setenv("WAVEKV_SERVE_PORT", "9001")
    assert load(ServeSettings).port == 9001
    assert load(ServeSettings, {"port": "9002"}).port == 9002
    assert load(ServeSettings, {"port": None}).port == 9001  # an unset flag is no override


@pytest.mark.parametrize(
    ("text", "expected"),
    [("16GiB", 16 << 30), ("512 MiB", 512 << 20), ("2GB", 2_000_000_000), ("4096", 4096)],
)
def test_byte_sizes_take_units(text: str, expected: int) -> None:
    assert load(ClusterSettings, {"object_store_bytes": text}).object_store_bytes == expected


def test_empty_variables_are_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WAVEKV_MODEL", "")
    monkeypatch.setenv("WAVEKV_SERVED_MODEL_NAME", "")
    settings = load(ServeSettings)
    assert settings.model is None and settings.served_model_name is None


def test_settings_are_frozen() -> None:
    settings = load(WorkerMetricsSettings)
    with pytest.raises(Exception, match="frozen"):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cls", "flags", "env", "message"),
    [
        (JobSettings, {"input": "i"}, {}, "--output is required (or set WAVEKV_JOB_OUTPUT)"),
        (JobSettings, {"input": "i", "output": "o", "batch_size": "0"}, {},
         "--batch-size='0': Input should be greater than or equal to 1"),
        (JobSettings, {"input": "i", "output": "o"}, {"WAVEKV_STORE_TIMEOUT_S": "soon"},
         "WAVEKV_STORE_TIMEOUT_S='soon': Input should be a valid number"),
        (ServeSettings, {}, {"WAVEKV_SERVE_MAX_BATCH_SIZE": "-2"},
         "WAVEKV_SERVE_MAX_BATCH_SIZE='-2': Input should be greater than or equal to 1"),
        (ClusterSettings, {"store_capacity_bytes": "lots"}, {},
         "--store-capacity-bytes='lots': could not parse value and unit from byte string"),
        (WorkerMetricsSettings, {}, {"WAVEKV_WORKER_METRICS_PORT": "http"},
         "WAVEKV_WORKER_METRICS_PORT='http': Input should be a valid integer"),
    ],
)  # fmt: skip
def test_errors_name_the_source_and_quote_the_value(
    cls: type, flags: dict[str, str], env: dict[str, str], message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as err:
        load(cls, flags)
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


def test_cluster_state_dir_expands_the_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load(ClusterSettings, {"state_dir": "~/c"}).state_dir == tmp_path / "c"
