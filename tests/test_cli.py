"""The command line: sizes, durations, and clear errors for unusable settings."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether.cli import build_parser, parse_duration, parse_size
from tether.engine import EngineConfig, UploadService
from tether.server.app import TetherApp
from tether.server.config import ServerConfig
from tether.server.run import build_app
from tether.state.memory import MemoryStateStore
from tether.storage.memory import MemoryByteStore


@pytest.mark.parametrize(
    ("text", "size"),
    [("1048576", 1048576), ("512MiB", 512 * 2**20), ("5g", 5 * 2**30), ("1.5KiB", 1536)],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MiB", "-1x", "12 parsecs"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("3600", 3600.0), ("90m", 5400.0), ("24h", 86400.0), ("never", None)]
)
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_environment_supplies_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_PORT", "8089")
    monkeypatch.setenv("TETHER_DURABILITY", "machine")
    monkeypatch.setenv("TETHER_COMMIT_PERIOD", "0")
    monkeypatch.setenv("TETHER_QUIET_COMMIT", "2.5")
    args = build_parser().parse_args(["serve"])
    assert (args.port, args.durability) == (8089, "machine")
    assert (args.commit_period, args.quiet_commit) == (0.0, 2.5)


async def test_the_commit_settings_reach_the_engine_and_the_body_reader(tmp_path: Path) -> None:
    config = ServerConfig(
        state_url=f"sqlite:///{tmp_path}/state.db",
        storage_url=f"file://{tmp_path}/uploads",
        commit_interval=1024 * 1024,
        commit_period=0.5,
        quiet_commit=2.5,
    )
    app = build_app(config)
    service = app.service
    try:
        engine = service.config
        assert (engine.commit_interval, engine.commit_period) == (1024 * 1024, 0.5)

        async def receive() -> dict[str, object]:
            raise AssertionError("not read")

        assert app._body({}, receive)._quiet == 2.5  # the body reader's quiet signal
    finally:
        await service.state.close()
        await service.storage.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--state", "mysql://x"], "known schemes: sqlite://"),
        (["--state", "sqlite:////proc/none/state.db"], "cannot open SQLite database"),
        (["--storage", "file:///proc/none/uploads"], "cannot use /proc/none/uploads"),
        (["--commit-period", "-1"], "commit period must be"),
        (["--commit-period", "nan"], "commit period must be"),
        (["--quiet-commit", "-0.5"], "quiet commit must be"),
    ],
)
def test_unusable_settings_exit_2_with_a_message(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    state = ["--state", f"sqlite:///{tmp_path}/state.db"]
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", "serve", "--port", "0", *state, *flags],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("TETHER_PORT", "80a", "argument --port: invalid int value: '80a'"),
        ("TETHER_BODY_TIMEOUT", "1m", "argument --body-timeout: invalid float value: '1m'"),
        ("TETHER_COMMIT_PERIOD", "abc", "argument --commit-period: invalid float value"),
        ("TETHER_QUIET_COMMIT", "soon", "argument --quiet-commit: invalid float value"),
    ],
)
def test_a_bad_number_in_the_environment_is_a_usage_error(
    tmp_path: Path, name: str, value: str, message: str
) -> None:
    # (--port on the command line would win over TETHER_PORT.)
    port = [] if name == "TETHER_PORT" else ["--port", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", "serve", *port],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**os.environ, name: value},
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@h/db", "postgresql://u:***@h/db"),
        ("postgresql://h/db?password=abc&schema=x", "postgresql://h/db?password=***&schema=x"),
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("sqlite:///./x.db", "sqlite:///./x.db"),
    ],
)
def test_urls_are_redacted(url: str, shown: str) -> None:
    from tether.backends import redact

    assert redact(url) == shown


async def test_a_quiet_commit_the_body_timeout_would_preempt_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = ServerConfig(
        state_url=f"sqlite:///{tmp_path}/state.db",
        storage_url=f"file://{tmp_path}/uploads",
        body_idle_timeout=5.0,
        quiet_commit=5.0,
    )
    with caplog.at_level(logging.WARNING, logger="tether.server"):
        service = build_app(config).service
    await service.state.close()
    await service.storage.close()
    assert "--quiet-commit 5 is not below --body-timeout 5" in caplog.text


async def test_no_quiet_signal_for_a_store_that_commits_whole_parts() -> None:
    class PartStore(MemoryByteStore):
        commit_interval = 8 * 1024 * 1024

    config = ServerConfig(quiet_commit=1.0)
    app = TetherApp(config, UploadService(MemoryStateStore(), PartStore(), EngineConfig("n1")))

    async def receive() -> dict[str, object]:
        raise AssertionError("not read")

    assert app._body({}, receive)._quiet is None
