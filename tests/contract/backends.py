"""The backends every contract suite runs against, one entry per kind of store.

To run the suites against a new backend, add one ``pytest.param`` to ``STATE_BACKENDS`` or
``BYTE_BACKENDS``: a ``url`` function naming a fresh, empty store for one test, and a
``factory`` that opens a handle on a URL. A PostgreSQL entry would look like::

    pytest.param(
        StateBackend("postgresql", url=fresh_postgres_database, factory=open_state),
        marks=pytest.mark.skipif("TETHER_TEST_POSTGRES" not in os.environ, reason="..."),
        id="postgresql",
    )

Handles opened on one URL must see the same data, as nodes sharing a store do; the
concurrency tests open several of them and race them from threads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

from tether.backends import open_state, open_storage
from tether.state.base import StateStore
from tether.storage.base import ByteStore

Store = TypeVar("Store", StateStore, ByteStore)


@dataclass(frozen=True)
class Backend(Generic[Store]):
    name: str
    url: Callable[[Path], str]
    """A URL naming a fresh, empty store that lives as long as ``tmp_path``."""
    factory: Callable[[str], Store]
    """Opens a new handle on the store a URL names."""
    one_instance: bool = False
    """Each ``factory`` call makes an unrelated store (``memory://``): handles of one test
    then share a single instance, which is only safe on one event loop thread."""
    service: str | None = None
    """A session fixture the store runs on (``s3_gateway``); ``url_on`` then names a fresh
    store on it instead of ``url``."""
    url_on: Callable[[Any, Path], str] | None = None

    def fresh_url(self, request: pytest.FixtureRequest, tmp_path: Path) -> str:
        if self.service is None or self.url_on is None:
            return self.url(tmp_path)
        return self.url_on(request.getfixturevalue(self.service), tmp_path)

    @property
    def threadsafe(self) -> bool:
        """Several handles may run on several threads at once, like separate processes."""
        return not self.one_instance


StateBackend = Backend[StateStore]
ByteBackend = Backend[ByteStore]


@dataclass
class Handles(Generic[Store]):
    """Handles on one fresh store of ``backend``; the fixture closes them at teardown."""

    backend: Backend[Store]
    url: str
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        if self.backend.one_instance and self.opened:
            return self.opened[0]
        store = self.backend.factory(self.url)
        self.opened.append(store)
        return store

    async def aclose(self) -> None:
        for store in self.opened:
            await store.close()
        self.opened.clear()


MEMORY_STATE = StateBackend(
    "memory", url=lambda tmp: "memory://", factory=open_state, one_instance=True
)
SQLITE_STATE = StateBackend(
    "sqlite", url=lambda tmp: f"sqlite:///{tmp}/state.db", factory=open_state
)
MEMORY_BYTES = ByteBackend(
    "memory", url=lambda tmp: "memory://", factory=open_storage, one_instance=True
)
FILE_BYTES = ByteBackend("filesystem", url=lambda tmp: f"file://{tmp}/bytes", factory=open_storage)

# Imported here, not at the top: those modules build their entries with the classes above.
from tests.contract import postgres_backend, redis_backend  # noqa: E402

STATE_BACKENDS = [
    pytest.param(MEMORY_STATE, id="memory"),
    pytest.param(SQLITE_STATE, id="sqlite"),
    *postgres_backend.PARAMS,
    *redis_backend.PARAMS,
]

S3_BYTES = ByteBackend(
    "s3",
    url=lambda tmp: "",
    factory=open_storage,
    service="s3_gateway",
    # One bucket per test, under a prefix, as a deployment would use it.
    url_on=lambda s3, tmp: s3.url(s3.new_bucket(), "uploads"),
)

BYTE_BACKENDS = [
    pytest.param(MEMORY_BYTES, id="memory"),
    pytest.param(FILE_BYTES, id="filesystem"),
    pytest.param(S3_BYTES, id="s3", marks=pytest.mark.s3),
]
