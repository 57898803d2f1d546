"""The redis state backend for the contract suites.

Runs against ``$TETHER_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Each test
gets its own key prefix; its keys are deleted when the next Redis test asks for a store,
and at exit for the last one (``Backend.url`` has no teardown hook of its own). When the
server cannot be reached (checked once per session, 1 s timeout), the tests are skipped
with the reason.
"""

from __future__ import annotations

import atexit
import functools
import os
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.contract.backends import StateBackend
from tether.backends import open_state, redact

ENV = "TETHER_TEST_REDIS_URL"
DEFAULT_URL = "redis://127.0.0.1:6379/0"

_lock = threading.Lock()
_used_prefixes: list[str] = []


def server_url() -> str:
    return os.environ.get(ENV, DEFAULT_URL)


@functools.cache
def unreachable() -> str | None:
    """Why the test server cannot be used, or None if it can (asked once per session)."""
    url = server_url()
    try:
        import redis
    except ImportError as exc:
        return f"redis-py is not installed ({exc})"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"no Redis at {redact(url)} ({exc}); set {ENV} to a Redis server to test against"
    return None


def delete_keys(prefixes: list[str]) -> None:
    """Delete every key under ``prefixes``. SCAN is fine here: tests only."""
    if not prefixes or unreachable() is not None:
        return
    import redis

    client = redis.Redis.from_url(server_url(), socket_connect_timeout=1, socket_timeout=5)
    try:
        for prefix in prefixes:
            batch = list(client.scan_iter(match=f"{prefix}*", count=500))
            if batch:
                client.unlink(*batch)
    finally:
        client.close()


def _cleanup_used() -> None:
    with _lock:
        prefixes = list(_used_prefixes)
        _used_prefixes.clear()
    delete_keys(prefixes)


atexit.register(_cleanup_used)


def fresh_redis_url(tmp_path: Path) -> str:
    """A URL on the test server with a prefix no other test uses."""
    reason = unreachable()
    if reason is not None:
        pytest.skip(reason)
    _cleanup_used()  # tests run one after another: earlier tests are done with theirs
    prefix = f"t:{secrets.token_hex(6)}:"
    with _lock:
        _used_prefixes.append(prefix)
    url = server_url()
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


PARAMS: list[Any] = [
    pytest.param(StateBackend("redis", url=fresh_redis_url, factory=open_state), id="redis"),
]
