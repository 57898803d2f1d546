from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cephfs import cephfs
from tests.support.rgw import s3_gateway
from tests.support.server import ServerProcess

__all__ = ["cephfs", "s3_gateway"]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A real ``tether serve`` on a free loopback port, SQLite state, a temp data dir."""
    with ServerProcess(tmp_path / "server") as proc:
        yield proc
