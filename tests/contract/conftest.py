from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.contract.backends import (
    BYTE_BACKENDS,
    STATE_BACKENDS,
    ByteBackend,
    Handles,
    StateBackend,
)
from tether.state.base import StateStore
from tether.storage.base import ByteStore


@pytest.fixture(params=STATE_BACKENDS)
async def state_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Handles[StateStore]]:
    backend: StateBackend = request.param
    handles = Handles(backend, backend.url(tmp_path))
    yield handles
    await handles.aclose()


@pytest.fixture(params=BYTE_BACKENDS)
async def byte_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Handles[ByteStore]]:
    backend: ByteBackend = request.param
    handles = Handles(backend, backend.fresh_url(request, tmp_path))
    yield handles
    await handles.aclose()
