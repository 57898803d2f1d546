"""Backends chosen by URL, imported lazily so users install only the drivers they use.

``sqlite:///./rel/path.db``, ``sqlite:////abs/path.db`` (or ``sqlite:///abs/path.db``),
``memory://`` for state; ``file://./rel/dir``, ``file:///abs/dir``, ``memory://`` for bytes.
"""

from __future__ import annotations

import importlib
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tether.state.base import StateStore
from tether.storage.base import ByteStore


class BackendError(ValueError):
    """A backend URL that cannot be used; the message says why and what would work."""


STATE_BACKENDS = {
    "sqlite": "tether.state.sqlite:open_from_url",
    "memory": "tether.state.memory:open_from_url",
    "postgresql": "tether.state.postgres:open_from_url",
    "postgres": "tether.state.postgres:open_from_url",
    "redis": "tether.state.redis:open_from_url",
    "rediss": "tether.state.redis:open_from_url",
}

STORAGE_BACKENDS = {
    "file": "tether.storage.filesystem:open_from_url",
    "memory": "tether.storage.memory:open_from_url",
    "s3": "tether.storage.s3:open_from_url",
}


_SECRET_PARAMS = re.compile(
    r"(?i)((?:^|&)(?:password|passwd|pass|secret|token|access_key|secret_key)=)[^&]*"
)


def redact(url: str) -> str:
    """The URL with any password (in the user part or the query) replaced, for logs and
    reprs."""
    parts = urlsplit(url)
    query = _SECRET_PARAMS.sub(r"\1***", parts.query)
    if parts.password is None and query == parts.query:
        return url  # unsplit would also rewrite harmless forms like sqlite:///./x.db
    if parts.password is not None:
        host = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{host}")
    return urlunsplit(parts._replace(query=query))


def _load(table: dict[str, str], url: str, kind: str) -> Any:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    target = table.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in table)
        raise BackendError(f"unknown {kind} URL {redact(url)!r}; known schemes: {known}")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"{kind} backend {scheme}:// needs a driver: {exc}") from exc
    return getattr(module, attr)


def open_state(url: str, *, durable: bool = False) -> StateStore:
    opener = _load(STATE_BACKENDS, url, "state")
    store: StateStore = opener(url, durable=durable)
    return store


def open_storage(url: str, *, max_size: int | None = None) -> ByteStore:
    """``max_size``: the largest upload the server will accept, for stores that size
    their parts by it (S3)."""
    opener = _load(STORAGE_BACKENDS, url, "storage")
    store: ByteStore = opener(url, max_size=max_size)
    return store


def path_from_file_url(url: str) -> str:
    """``file://./rel`` → ``./rel``; ``file:///abs`` → ``/abs``; ``file://rel`` → ``rel``."""
    rest = url.split("://", 1)[1]
    if not rest:
        raise BackendError(f"{url!r} names no directory")
    return rest
