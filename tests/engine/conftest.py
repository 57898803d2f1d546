from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.contract import backends
from tests.contract.backends import FILE_BYTES, MEMORY_BYTES, MEMORY_STATE, SQLITE_STATE
from tests.engine.support import Stack, open_stack

STACKS = [
    pytest.param((MEMORY_STATE, MEMORY_BYTES), id="memory"),
    pytest.param((SQLITE_STATE, FILE_BYTES), id="sqlite-file"),
    # The cluster state stores, over real connections (skipped, saying why, without them).
    *(
        pytest.param((param.values[0], FILE_BYTES), id=f"{param.id}-file", marks=param.marks)
        for param in (*backends.postgres_backend.PARAMS, *backends.redis_backend.PARAMS)
    ),
]


@pytest.fixture(params=STACKS)
async def stack(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    state, storage = request.param
    opened = open_stack(state, storage, tmp_path)
    yield opened
    await opened.aclose()


@pytest.fixture
async def file_stack(tmp_path: Path) -> AsyncIterator[Stack]:
    """SQLite and the filesystem store only: for bodies the kernel splices into a file."""
    opened = open_stack(SQLITE_STATE, FILE_BYTES, tmp_path)
    yield opened
    await opened.aclose()
