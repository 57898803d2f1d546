"""Shared state stores for tests that start ``tether serve`` processes: a fresh PostgreSQL
schema or Redis key prefix per test, on the servers ``tests/contract`` finds."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import pytest


@contextlib.contextmanager
def fresh_state(kind: str, tag: str = "e2e") -> Iterator[str]:
    """A state URL with a fresh schema (``postgresql``) or key prefix (``redis``) named
    after ``tag``, removed afterwards; the test is skipped, with the reason, when the
    server cannot be reached."""
    # tests.contract.backends imports the two backend modules itself; importing either of
    # them first would be a circular import.
    import tests.contract.backends  # noqa: F401

    if kind == "postgresql":
        from tests.contract import postgres_backend as pg

        if pg.SKIP_REASON is not None:
            pytest.skip(pg.SKIP_REASON)
        import psycopg
        from psycopg import sql

        schema = f"{tag}_{secrets.token_hex(6)}"
        base = pg.SERVER_URL
        try:
            yield f"{base}{'&' if '?' in base else '?'}schema={schema}"
        finally:
            with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
                )
    else:
        from tests.contract import redis_backend as rb

        reason = rb.unreachable()
        if reason is not None:
            pytest.skip(reason)
        prefix = f"{tag}:{secrets.token_hex(6)}:"
        base = rb.server_url()
        try:
            yield f"{base}{'&' if '?' in base else '?'}prefix={prefix}"
        finally:
            rb.delete_keys([prefix])
