"""Settings: byte sizes, environment and flags, one-line errors that quote the value."""

from __future__ import annotations

import pytest

from kvstore_server.memory import DEFAULT_CAPACITY_FRACTION, host_memory_bytes
from kvstore_server.settings import ServerSettings, SettingsError, parse_bytes


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("1048576", 1 << 20),
        ("16GiB", 16 << 30),
        ("16G", 16 << 30),
        ("16g", 16 << 30),
        ("512MiB", 512 << 20),
        ("2GB", 2 * 10**9),
        ("1.5KiB", 1536),
        (" 4 KiB ", 4096),
        ("0", 0),
    ],
)
def test_byte_sizes(raw: str, want: int) -> None:
    assert parse_bytes(raw) == want


@pytest.mark.parametrize("raw", ["", "abc", "16XB", "-1", "1.3B", "GiB", "1e9"])
def test_bad_byte_sizes(raw: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(raw)


def test_environment_then_flags() -> None:
    env = {"WAVEKV_PORT": "7000", "WAVEKV_CAPACITY_BYTES": "1GiB", "WAVEKV_FSYNC": "always"}
    s = ServerSettings.from_sources(env, {"port": "7001", "shm_slab_bytes": "64MiB"})
    assert (s.port, s.capacity_bytes, s.fsync, s.shm_slab_bytes) == (
        7001,
        1 << 30,
        "always",
        64 << 20,
    )
    assert ServerSettings.from_sources({}).capacity_bytes == int(
        host_memory_bytes() * DEFAULT_CAPACITY_FRACTION
    )


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({"WAVEKV_PORT": "abc"}, {}, "WAVEKV_PORT='abc' is not a valid number"),
        ({}, {"capacity_bytes": "lots"}, "--capacity-bytes='lots' is not a valid byte size"),
        ({}, {"port": "70000"}, "port=70000 out of range"),
        ({}, {"fsync": "sometimes"}, "fsync='sometimes' is not one of always, everysec, no"),
        ({"WAVEKV_STREAM_IDLE_S": "nan"}, {}, "WAVEKV_STREAM_IDLE_S='nan'"),
        ({}, {"tls_cert": "c.pem"}, "give both or neither"),
        ({}, {"max_put_streams": "0"}, "max_put_streams=0 out of range"),
    ],
)
def test_bad_values_name_the_setting(env: dict, flags: dict, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        ServerSettings.from_sources(env, flags)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_slab_directory_follows_data_dir() -> None:
    assert ServerSettings().slab_dir == "/dev/shm"
    assert ServerSettings(data_dir="/d").slab_dir == "/d/slabs"
    assert ServerSettings(data_dir="/d", shm_dir="/dev/shm").slab_dir == "/dev/shm"
