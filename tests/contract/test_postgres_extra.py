"""What the PostgreSQL state store promises beyond the shared contract: its URL, its schema,
its errors, and its pools' lives across event loops."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.contract.postgres_backend import SERVER_URL, SKIP_REASON, fresh_schema_url
from tether.backends import BackendError, open_state
from tether.state.base import (
    Commit,
    Segment,
    StateStore,
    StoreUnavailable,
    UploadRecord,
    apply_commit,
)
from tether.state.postgres import _MIGRATIONS, PostgresStateStore, parse_url

needs_server = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


@pytest.fixture
def pg_url(tmp_path: Path) -> str:
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    return fresh_schema_url(tmp_path)


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    if SKIP_REASON is not None:
        pytest.skip(SKIP_REASON)
    with psycopg.connect(SERVER_URL, autocommit=True) as conn:
        yield conn


def schema_of(url: str) -> str:
    return parse_url(url).schema


# -- the URL -----------------------------------------------------------------------------


def test_tether_parameters_are_taken_out_and_libpq_ones_passed_on_as_written() -> None:
    settings = parse_url(
        "postgres://u:p%2Bq@db.example:6432/tether?sslmode=require&schema=up_loads"
        "&options=-c+statement_timeout%3D5000&pool_min=0&pool_max=3&pool_timeout=2.5"
    )
    assert settings.conninfo == (
        "postgres://u:p%2Bq@db.example:6432/tether?sslmode=require"
        "&options=-c+statement_timeout%3D5000"
    )
    assert (settings.schema, settings.pool_min, settings.pool_max) == ("up_loads", 0, 3)
    assert settings.pool_timeout == 2.5


def test_defaults() -> None:
    settings = parse_url("postgresql://localhost/db")
    assert settings == type(settings)("postgresql://localhost/db", "public", 1, 10, 10.0)


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("pool_size=3", "unknown query parameter 'pool_size'"),
        ("schema=a&schema=b", "given twice"),
        ("schema", "malformed"),
        ("schema=Uploads", "lower-case"),
        ("schema=pg_tether", "pg_"),
        ("schema=a;drop", "lower-case"),
        ("schema=", "lower-case"),
        ("pool_min=-1", "whole number"),
        ("pool_max=0", "pool_max"),
        ("pool_min=5&pool_max=2", "pool_max"),
        ("pool_timeout=0", "pool_timeout"),
        ("pool_timeout=nan", "pool_timeout"),
        ("pool_timeout=soon", "pool_timeout"),
    ],
)
def test_bad_urls_are_refused_without_showing_the_password(query: str, complaint: str) -> None:
    with pytest.raises(BackendError, match=complaint) as info:
        open_state(f"postgresql://tether:s3cret@db.example/tether?{query}")
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://tether:s3cret%zz@db.example/tether",
        "postgresql://tether@db.example/tether?password=s3cret%zz",
    ],
)
def test_a_password_libpq_cannot_parse_is_not_echoed(url: str) -> None:
    with pytest.raises(BackendError) as info:
        open_state(url)
    assert "s3cret" not in str(info.value)


def test_repr_hides_every_secret() -> None:
    store = open_state(
        "postgresql://tether:s3cret@db.example/tether?sslpassword=k3y&schema=up&password=pw2"
    )
    shown = repr(store)
    assert "db.example" in shown and "schema=up" in shown
    assert not any(secret in shown for secret in ("s3cret", "k3y", "pw2"))


# -- errors ------------------------------------------------------------------------------


async def test_an_unreachable_server_is_unavailable_naming_the_host_not_the_password() -> None:
    store = open_state("postgresql://tether:s3cret@127.0.0.1:1/tether?pool_timeout=1")
    with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1:1") as info:
        await store.check()
    assert "s3cret" not in str(info.value)
    await store.close()


@needs_server
async def test_a_lost_connection_is_unavailable_once_then_replaced(
    pg_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    name = f"tether-test-{secrets.token_hex(4)}"
    store = open_state(f"{pg_url}&application_name={name}&pool_max=1")
    record = UploadRecord(id="u", length=10, created_at=1.0)
    await store.create(record)
    killed = admin.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (name,),
    ).fetchone()
    assert killed == (1,)
    with pytest.raises(StoreUnavailable, match="is unavailable"):
        await store.get("u")
    assert await store.get("u") == record
    await store.close()


@needs_server
async def test_statements_deallocated_behind_the_store_are_prepared_again(pg_url: str) -> None:
    """``DISCARD ALL`` (or a pooler handing out another server session) drops the
    statements the store prepared on a connection; the next call prepares them again."""
    store = open_state(f"{pg_url}&pool_max=1")
    assert isinstance(store, PostgresStateStore)
    record = UploadRecord(id="u", length=10, created_at=1.0)
    await store.create(record)
    assert await store.get("u") == record
    pool = await store._get_pool()
    async with pool.connection() as conn:  # the store's only connection
        await conn.execute("DEALLOCATE ALL")
    assert await store.get("u") == record
    assert (await store.acquire("u", node="n", client=None)).epoch == 1
    await store.close()


@contextlib.asynccontextmanager
async def _acquire_held_by_a_row_lock(
    pg_url: str, admin: psycopg.Connection[tuple[object, ...]], name: str
) -> AsyncIterator[tuple[StateStore, asyncio.Task[UploadRecord], str]]:
    """A store on one connection named ``name``, and its acquire of upload ``u`` waiting
    on the row lock ``admin`` holds until the block ends (with the row's table)."""
    store = open_state(f"{pg_url}&pool_max=1&application_name={name}")
    await store.create(UploadRecord(id="u", length=10, created_at=1.0))
    table = f'"{schema_of(pg_url)}".uploads'
    with admin.transaction():
        admin.execute(f"SELECT 1 FROM {table} WHERE id = 'u' FOR UPDATE")
        waiting = asyncio.create_task(store.acquire("u", node="n", client=None))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        yield store, waiting, table


@needs_server
async def test_a_statement_cancelled_in_flight_is_stopped_and_leaves_no_result_behind(
    pg_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A request cancelled while its acquire waits on a row lock: the server is asked to
    stop the statement, so it ends while the lock is still held and never bumps the epoch,
    and the connection is closed, so no late result answers the next statement."""
    name = f"tether-test-{secrets.token_hex(4)}"

    def ours_active() -> object:
        # (Inside a transaction, pg_stat_activity is read once and kept: read it afresh.)
        admin.execute("SELECT pg_stat_clear_snapshot()")
        return admin.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = %s AND state = 'active'",
            (name,),
        ).fetchone()

    async with _acquire_held_by_a_row_lock(pg_url, admin, name) as (store, waiting, table):
        assert ours_active() == (1,)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        for _ in range(100):
            if ours_active() == (0,):
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the cancelled statement still runs while the lock is held")
    for expected in (1, 2, 3):
        assert (await store.acquire("u", node="n", client=None)).epoch == expected
        assert admin.execute(f"SELECT epoch FROM {table} WHERE id = 'u'").fetchone() == (expected,)
    await store.close()


@needs_server
async def test_a_connection_lost_while_a_statement_waits_is_unavailable_then_replaced(
    pg_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """The server ends the session while the acquire waits on a row lock (a failover, an
    administrator): the acquire fails at once as unavailable, and the next one works."""
    name = f"tether-test-{secrets.token_hex(4)}"
    async with _acquire_held_by_a_row_lock(pg_url, admin, name) as (store, waiting, _):
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        with pytest.raises(StoreUnavailable, match="is unavailable"):
            await asyncio.wait_for(waiting, 5)
    assert (await store.acquire("u", node="n", client=None)).epoch == 1
    await store.close()


@needs_server
async def test_a_pool_with_no_free_connection_says_so(pg_url: str) -> None:
    store = open_state(f"{pg_url}&pool_max=1&pool_timeout=0.2")
    assert isinstance(store, PostgresStateStore)
    await store.check()
    pool = await store._get_pool()
    held = await pool.getconn()
    try:
        with pytest.raises(StoreUnavailable, match="all of pool_max=1 busy"):
            await store.check()
    finally:
        await pool.putconn(held)
    await store.check()
    await store.close()


@needs_server
async def test_a_closed_store_is_unavailable(pg_url: str) -> None:
    store = open_state(pg_url)
    await store.check()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.check()


# -- the schema --------------------------------------------------------------------------


@needs_server
async def test_handles_starting_together_create_the_schema_once(
    pg_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    stores = [open_state(pg_url) for _ in range(6)]
    await asyncio.gather(*(s.check() for s in stores))
    schema = schema_of(pg_url)
    rows = admin.execute(f'SELECT version FROM "{schema}".tether_schema_version').fetchall()
    assert rows == [(1,), (2,)]
    indexes = admin.execute(
        "SELECT indexname FROM pg_indexes WHERE schemaname = %s ORDER BY 1", (schema,)
    ).fetchall()
    assert ("uploads_expiry",) in indexes
    for store in stores:
        await store.close()


@needs_server
async def test_a_schema_from_a_newer_tether_is_refused(
    pg_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    first = open_state(pg_url)
    await first.check()
    await first.close()
    admin.execute(f'INSERT INTO "{schema_of(pg_url)}".tether_schema_version VALUES (99)')
    second = open_state(pg_url)
    with pytest.raises(StoreUnavailable, match="newer tether"):
        await second.check()
    await second.close()


@needs_server
async def test_expired_reads_the_expiry_index(
    pg_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    store = open_state(pg_url)
    assert isinstance(store, PostgresStateStore)
    await store.check()
    with admin.transaction():
        admin.execute("SET LOCAL enable_seqscan = off")
        plan = admin.execute(
            "EXPLAIN " + store._sql_expired % {"now": 1000, "limit": 10}
        ).fetchall()
    assert "uploads_expiry" in " ".join(str(row[0]) for row in plan)
    await store.close()


def _updates(admin: psycopg.Connection[tuple[object, ...]], schema: str) -> tuple[int, int]:
    """(updates, of which HOT) of the uploads table, as the statistics have them."""
    row = admin.execute(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
        " WHERE schemaname = %s AND relname = 'uploads'",
        (schema,),
    ).fetchone()
    assert row is not None
    return int(str(row[0])), int(str(row[1]))


@needs_server
async def test_appends_update_the_row_in_place(
    pg_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    # An index on a column an append changes would cost every commit an entry in each
    # index (a non-HOT update). expires_at moves on every commit; its index does not.
    store = open_state(pg_url)
    now = 1_800_000_000.0  # on a minute, so that the commits below stay within it
    await store.create(UploadRecord(id="u", length=100, created_at=now, expires_at=now))
    record = await store.acquire("u", node="n", client=None)
    for step in range(1, 11):
        grown = Commit(
            record.epoch, record.offset, step, (Segment("e1-ab", 0, step),), 100, now + step
        )
        await store.commit("u", grown)
        record = apply_commit(record, grown)
    assert await store.get("u") == record
    assert await store.expired(now + 10, 10) == []
    assert await store.expired(now + 10.5, 10) == ["u"]
    await store.close()  # its sessions end, and report their statistics as they do
    updates, hot = _updates(admin, schema_of(pg_url))
    for _ in range(50):
        if updates >= 11:
            break
        await asyncio.sleep(0.1)
        updates, hot = _updates(admin, schema_of(pg_url))
    assert (updates, hot) == (11, 11)


@needs_server
async def test_a_version_1_schema_is_migrated_with_its_uploads(
    pg_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    schema = schema_of(pg_url)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(
        f'CREATE TABLE "{schema}".tether_schema_version (version integer PRIMARY KEY,'
        " migrated_at timestamptz NOT NULL DEFAULT now())"
    )
    for statement in _MIGRATIONS[1]:
        admin.execute(statement.format(s=f'"{schema}"'))
    admin.execute(f'INSERT INTO "{schema}".tether_schema_version (version) VALUES (1)')
    admin.execute(
        f'INSERT INTO "{schema}".uploads (id, length, created_at, expires_at)'
        " VALUES ('old', 10, 1.0, 1000.5), ('kept', 10, 1.0, 5000.0)"
    )
    store = open_state(pg_url)
    assert await store.expired(2000.0, 10) == ["old"]
    old = await store.get("old")
    assert old is not None and old.expires_at == 1000.5
    await store.close()
    rows = admin.execute(f'SELECT version FROM "{schema}".tether_schema_version ORDER BY 1')
    assert rows.fetchall() == [(1,), (2,)]


@needs_server
async def test_flushes_are_skipped_for_their_own_transaction_only(pg_url: str) -> None:
    # A session default of off (as ALTER ROLE … SET would give) is turned back on, and the
    # statements that commit without a flush turn it off for their own transaction only:
    # the statement after them, on the same connection, waits for the flush.
    store = open_state(f"{pg_url}&pool_max=1&options=-c%20synchronous_commit%3Doff")
    assert isinstance(store, PostgresStateStore)
    assert b"set_config('synchronous_commit', 'off', true)" in store._hot_acquire.sql
    assert b"set_config" in store._hot_commit.sql
    assert b"set_config" in store._hot_commit_release_nf.sql
    assert b"set_config" not in store._hot_commit_release.sql
    pool = await store._get_pool()

    async def setting() -> tuple[object, ...] | None:
        async with pool.connection() as conn:  # the store's only connection
            return await (await conn.execute("SHOW synchronous_commit")).fetchone()

    assert await setting() == ("on",)
    await store.create(UploadRecord(id="u", length=10, created_at=1.0))
    leased = await store.acquire("u", node="n", client=None)
    assert await setting() == ("on",)
    mid = Commit(
        epoch=leased.epoch,
        expected_offset=0,
        offset=4,
        segments=(Segment("e1-ab", 0, 4),),
        length=10,
        expires_at=None,
    )
    await store.commit("u", mid)
    assert await setting() == ("on",)
    release = Commit(leased.epoch, 4, 6, (Segment("e1-ab", 0, 6),), 10, None, release=True)
    await store.commit("u", release)  # not complete: no flush either
    record = await store.get("u")
    assert record is not None and record.offset == 6 and await setting() == ("on",)
    ran = {name for session in store._sessions.values() for name in session.prepared}
    assert ran >= {b"tether_acquire_nf", b"tether_commit_nf", b"tether_commit_release_nf"}
    await store.close()


async def _statements_of_an_append(
    url: str, ends: int, *, durable: bool, settle: bool = False
) -> set[str]:
    """The statements an upload of 10 bytes ran, creation to a release at ``ends``."""
    store = open_state(f"{url}&pool_max=1", durable=durable)
    assert isinstance(store, PostgresStateStore)
    await store.create(UploadRecord(id="u", length=None if settle else 10, created_at=1.0))
    leased = await store.acquire("u", node="n", client=None)
    segments = (Segment("e2-ab", 0, ends),)
    release = Commit(
        leased.epoch, 0, ends, segments, 10, None, "e2-ab", release=True, settle=settle
    )
    await store.commit("u", release)
    assert (record := await store.get("u")) is not None and record.offset == ends
    ran = {name.decode() for session in store._sessions.values() for name in session.prepared}
    await store.close()
    return ran


@needs_server
@pytest.mark.parametrize(
    ("durability", "ends", "settle", "flushed"),
    [
        ("process", 4, False, False),
        ("process", 10, False, True),
        ("process", 4, True, True),
        ("machine", 4, False, True),
        ("machine", 10, False, True),
    ],
)
async def test_what_a_releasing_commit_waits_for(
    pg_url: str, durability: str, ends: int, settle: bool, flushed: bool
) -> None:
    """With ``--durability process`` an acknowledged offset may wait for the WAL writer
    (a PostgreSQL crash may lose it, and the client re-sends); a completed upload or a
    first declared length never does, and with ``machine`` nothing a client is told
    does."""
    machine = durability == "machine"
    ran = await _statements_of_an_append(pg_url, ends, durable=machine, settle=settle)
    assert ("tether_commit_release" in ran) is flushed
    assert ("tether_commit_release_nf" in ran) is not flushed


# -- event loops -------------------------------------------------------------------------


def run_in_thread(target: object, timeout: float) -> None:
    """Run ``target`` on a daemon thread; fail if it is still running after ``timeout``."""
    failures: list[BaseException] = []

    def wrap() -> None:
        try:
            target()  # type: ignore[operator]
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=wrap, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    assert failures == []


@needs_server
def test_a_loop_may_end_while_its_pool_is_still_connecting(pg_url: str) -> None:
    """``asyncio.run`` returns as soon as one of many requests is served, while the pool
    is still growing for the others; the next loop gets a pool of its own."""
    store = open_state(f"{pg_url}&pool_min=0&pool_max=8")

    async def burst() -> None:
        tasks = [asyncio.ensure_future(store.check()) for _ in range(8)]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)

    def run() -> None:
        for _ in range(5):
            asyncio.run(burst())
        asyncio.run(store.close())

    run_in_thread(run, timeout=30)


@needs_server
async def test_one_handle_on_two_live_loops_is_refused(pg_url: str) -> None:
    store = open_state(pg_url)
    await store.check()
    with pytest.raises(RuntimeError, match="one handle per event loop"):
        await asyncio.to_thread(asyncio.run, store.check())
    await store.check()
    await store.close()
