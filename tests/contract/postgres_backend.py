"""The postgres state backend for the contract suites.

The server comes from ``TETHER_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); it is probed once per session, for a second,
and the backend is skipped, saying so, when nothing answers. Each test gets a schema of its
own (``t_<run>_<random>``), and every schema of this run is dropped when the run ends.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import secrets
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.contract.backends import StateBackend
from tether.backends import open_state
from tether.state.postgres import display_url

URL_ENV = "TETHER_TEST_POSTGRES_URL"
DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SERVER_URL = os.environ.get(URL_ENV) or DEFAULT_URL

RUN = secrets.token_hex(4)
"""Names this run's schemas, so the cleanup drops only what this process made."""
SCHEMA_PREFIX = f"t_{RUN}_"


def _unreachable(url: str, timeout: float = 1.0) -> str | None:
    """Why ``url`` cannot be used, or None if a connection succeeds within ``timeout``."""

    async def probe() -> None:
        conn = await psycopg.AsyncConnection.connect(url)
        await conn.close()

    try:
        asyncio.run(asyncio.wait_for(probe(), timeout))
    except TimeoutError:
        reason = f"no answer within {timeout:g} s"
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
    else:
        return None
    return (
        f"no PostgreSQL at {display_url(url)} ({reason}); set {URL_ENV} to a server's URL"
        " (a database the tests may create and drop schemas in) to run these tests"
    )


SKIP_REASON = _unreachable(SERVER_URL)


def fresh_schema_url(tmp_path: Path) -> str:
    """The server URL with a schema nobody has used yet."""
    schema = f"{SCHEMA_PREFIX}{secrets.token_hex(6)}"
    return f"{SERVER_URL}{'&' if '?' in SERVER_URL else '?'}schema={schema}"


def drop_run_schemas() -> list[str]:
    """Drop every schema this run created; return their names."""
    with psycopg.connect(SERVER_URL, autocommit=True, connect_timeout=5) as conn:
        names = [
            row[0]
            for row in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)",
                (SCHEMA_PREFIX,),
            )
        ]
        for name in names:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))
    return names


if SKIP_REASON is None:
    atexit.register(drop_run_schemas)


PARAMS: list[Any] = [
    pytest.param(
        StateBackend("postgresql", url=fresh_schema_url, factory=open_state),
        id="postgresql",
        marks=pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
    )
]
