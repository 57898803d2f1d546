"""PostgreSQL state store: what several nodes share.

``postgresql://user:password@host:5432/dbname?schema=tether&pool_min=1&pool_max=10``
(or ``postgres://``). tether reads four query parameters itself and hands the rest of the
URL, byte for byte, to libpq (so ``sslmode``, ``options``, ``application_name``, … work as
documented there):

- ``schema`` (default ``public``): where the tables live; created if missing. Lower-case
  letters, digits and ``_``, as PostgreSQL would fold an unquoted name.
- ``pool_min`` (default 1), ``pool_max`` (default 10): connections per handle and event loop.
- ``pool_timeout`` (seconds, default 10): how long a request waits for a connection before
  the store reports itself unavailable (503); also the default ``connect_timeout``.

Any other parameter libpq does not know is an error, raised when the URL is opened.

Every operation is one statement, as in the SQLite store: ``acquire`` and ``commit`` are an
``UPDATE … WHERE id = … [AND epoch = … AND received = …] RETURNING …`` (compare-and-set on
the row, under PostgreSQL's row lock), ``expire`` a ``DELETE … WHERE <still expired and
incomplete> RETURNING id``. Connections run in autocommit mode, so each is one round trip
and no transaction is ever left open. The statements every append runs (``acquire``,
``commit``; ``get`` too) are prepared once per connection and sent through libpq directly,
without psycopg's cursors, adapters and wait loop (see ``_Statement``, ``_exchange``); a
session that lost them (``DISCARD ALL``) prepares them again. Behind pgBouncer in
transaction mode that needs its support for prepared statements (1.21+), as psycopg's own
automatic preparation did.
``metadata`` and ``segments`` are stored as the same JSON text the SQLite store writes
(``base.metadata_to_json``/``segments_to_json``): never queried into, cheaper to rewrite on
every commit than ``jsonb``, and ``jsonb`` cannot hold the ``\\u0000`` a metadata key may
contain.

The schema is created, or migrated, when a handle is first used: in one transaction holding
an advisory lock named after the schema, so nodes starting together do not race, and
recorded in ``tether_schema_version``.

Durability follows ``--durability``, as it does for the bytes. Some statements run with
``synchronous_commit`` off for their own transaction (``set_config(…, true)``): they wait
for no WAL flush, which on the test machine is about half a statement, and much more while
upload data is being written back to the same disk. Which ones:

- Always: an ``acquire``, and a commit made while a body still streams. Nothing they
  record reaches a client unflushed: the WAL is sequential, and the commit that ends the
  append flushes them with it when it is synchronous.
- With ``durable=False`` (``--durability process``), also a releasing commit that does not
  complete the upload: the end of an append, or a ``HEAD``. An acknowledged offset then
  survives any crash of tether, as bytes in the page cache and SQLite's
  ``synchronous=NORMAL`` do, but a crash of the PostgreSQL server (or its machine) may
  lose the last ~600 ms (3 x ``wal_writer_delay``) of them. The client's next ``PATCH``
  meets a ``409`` and it re-sends from the offset a ``HEAD`` gives.
- ``create``, a commit that completes an upload, one that records a length the upload
  did not have (``Commit.settle``), and everything else are synchronous whatever the
  setting. A client walks away once told its upload is complete, and re-sending bytes
  cannot repair a lost completion, a lost length or a lost upload. A lost release may
  also take back the expiry it extended, by the same ~600 ms.

A lost asynchronous commit may hand out an epoch a second time, which the fencing
survives: two holders of one epoch still compare-and-set on ``received``, so only one
extends the upload. A new segment's name is unique (``e<epoch>-<random>``). A segment
left continuable can be taken up by both holders, though. The filesystem store refuses
the second while the first has it open (an exclusive ``flock``). On S3, the window is a
writer that outlives the crash and the server's restart, then uploads a part after the
second holder uploaded the same one. If the role or database defaults to
``synchronous_commit = off``, the sessions set it back to ``on``, so that the commits
above are the only asynchronous ones.

A connection pool belongs to the event loop it was opened on, so a handle opens its pool
lazily, inside the running loop. A handle used under a new loop after the previous one has
finished (``asyncio.run`` called repeatedly, as tests and scripts do) closes the old pool's
connections and opens a new pool; using one handle from two live loops is an error: open a
handle per loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import errors, pq
from psycopg.conninfo import conninfo_to_dict
from psycopg.generators import execute
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tether.backends import BackendError, redact
from tether.state.base import (
    Commit,
    StaleLease,
    StoreUnavailable,
    UploadExists,
    UploadRecord,
    check_commit,
    metadata_from_json,
    segments_from_json,
    segments_to_json,
)
from tether.state.rows import COLUMN_COUNT, to_row
from tether.state.rows import COLUMNS as _COLUMNS

SCHEMA_VERSION: Final = 2
REAP_STEP: Final = 60
"""Seconds: the expiry index holds ``expires_at`` rounded down to a multiple of this."""

_TABLE = "uploads"
_VERSION_TABLE = "tether_schema_version"

# Migrations, by the version they bring the schema to; ``{s}`` is the quoted schema name.
_MIGRATIONS: Final[dict[int, tuple[str, ...]]] = {
    1: (
        # fillfactor leaves room in each page, so the frequent commits can be HOT updates.
        """
        CREATE TABLE {s}.uploads (
            id text PRIMARY KEY,
            length bigint,
            received bigint NOT NULL DEFAULT 0,
            metadata text NOT NULL DEFAULT '[]',
            partial boolean NOT NULL DEFAULT false,
            parts text[],
            created_at double precision NOT NULL,
            expires_at double precision,
            epoch bigint NOT NULL DEFAULT 0,
            tail text,
            tail_epoch bigint NOT NULL DEFAULT -1,
            segments text NOT NULL DEFAULT '[]',
            assembled boolean NOT NULL DEFAULT false,
            last_client text,
            last_node text,
            client_switches bigint NOT NULL DEFAULT 0,
            node_switches bigint NOT NULL DEFAULT 0
        ) WITH (fillfactor = 80)
        """,
        # On expires_at alone: an index whose predicate named ``received`` would make
        # every commit a non-HOT update.
        "CREATE INDEX uploads_expiry ON {s}.uploads (expires_at) WHERE expires_at IS NOT NULL",
    ),
    2: (
        # Every commit moves expires_at, and an index on it made every commit a non-HOT
        # update: a new entry in both indexes per append, dead ones for vacuum, and ~12% of
        # the server's CPU on small appends. The index is on the minute instead, which a
        # busy upload leaves unchanged; the reaper filters on the exact time.
        "ALTER TABLE {s}.uploads ADD COLUMN reap_at double precision"
        f" GENERATED ALWAYS AS (floor(expires_at / {REAP_STEP}) * {REAP_STEP}) STORED",
        "DROP INDEX {s}.uploads_expiry",
        "CREATE INDEX uploads_expiry ON {s}.uploads (reap_at) WHERE reap_at IS NOT NULL",
    ),
}


_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SECRET_PARAMS = frozenset(
    {"password", "sslpassword", "oauth_client_secret", "scram_client_key", "scram_server_key"}
)
_POOL_PARAMS = ("schema", "pool_min", "pool_max", "pool_timeout")


# -- URL ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresSettings:
    conninfo: str
    """The URL for libpq: tether's own query parameters taken out, the rest untouched."""
    schema: str = "public"
    pool_min: int = 1
    pool_max: int = 10
    pool_timeout: float = 10.0


def display_url(url: str) -> str:
    """``url`` with the password and every secret query parameter hidden."""
    shown = redact(url)
    parts = urlsplit(shown)
    if not parts.query:
        return shown
    query = "&".join(
        f"{raw.split('=', 1)[0]}=***" if unquote(raw.split("=", 1)[0]) in _SECRET_PARAMS else raw
        for raw in parts.query.split("&")
    )
    return urlunsplit(parts._replace(query=query))


def _libpq_keywords() -> frozenset[str]:
    return frozenset(o.keyword.decode() for o in pq.Conninfo.get_defaults())


def parse_url(url: str) -> PostgresSettings:
    """Split a ``postgresql://`` URL into tether's settings and libpq's URL; raise
    ``BackendError`` for anything neither of them would accept."""
    shown = display_url(url)
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise BackendError(f"{shown!r} is not a postgresql:// URL")
    if parts.fragment:
        raise BackendError(f"{shown!r}: a PostgreSQL URL takes no #fragment")
    ours: dict[str, str] = {}
    kept: list[str] = []
    seen: set[str] = set()
    libpq = _libpq_keywords()
    # libpq reads the query itself (percent-decoding, no "+" for space), so its
    # parameters are passed on as written; only their names are decoded, to check them.
    for raw in parts.query.split("&") if parts.query else ():
        name, eq, value = raw.partition("=")
        key = unquote(name)
        if not eq or not key:
            raise BackendError(f"{shown!r}: malformed query parameter {name!r}")
        if key in seen:
            raise BackendError(f"{shown!r}: query parameter {key!r} given twice")
        seen.add(key)
        if key in _POOL_PARAMS:
            ours[key] = unquote(value)
        elif key in libpq:
            kept.append(raw)
        else:
            raise BackendError(
                f"{shown!r}: unknown query parameter {key!r}; tether reads"
                f" {', '.join(_POOL_PARAMS)}, and libpq its own connection parameters"
            )
    conninfo = urlunsplit(parts._replace(query="&".join(kept)))
    try:
        conninfo_to_dict(conninfo)
    except psycopg.Error as exc:
        raise BackendError(f"{shown!r}: {_reason(exc, url)}") from None

    schema = ours.get("schema", "public")
    if not _SCHEMA_NAME.fullmatch(schema) or schema.startswith("pg_"):
        raise BackendError(
            f"{shown!r}: schema {schema!r} must be 1-63 lower-case letters, digits or _,"
            " not starting with a digit or pg_"
        )
    pool_min = _count(shown, ours, "pool_min", 1)
    pool_max = _count(shown, ours, "pool_max", 10)
    if pool_max < max(1, pool_min):
        raise BackendError(f"{shown!r}: pool_max must be at least 1 and at least pool_min")
    timeout = ours.get("pool_timeout", "10")
    try:
        pool_timeout = float(timeout)
    except ValueError:
        pool_timeout = math.nan
    if not (math.isfinite(pool_timeout) and pool_timeout > 0):
        raise BackendError(f"{shown!r}: pool_timeout must be a positive number of seconds")
    return PostgresSettings(conninfo, schema, pool_min, pool_max, pool_timeout)


def _count(shown: str, params: dict[str, str], name: str, default: int) -> int:
    value = params.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()):
        raise BackendError(f"{shown!r}: {name} must be a whole number, not {value!r}")
    return int(value)


def _reason(exc: psycopg.Error, url: str) -> str:
    """What went wrong, on one line: the server's own message when it sent one."""
    return _scrub(exc.diag.message_primary or str(exc), url)


def _scrub(message: str, url: str) -> str:
    """``message`` with the URL's secrets taken out, raw or decoded (libpq quotes the
    token it cannot parse)."""
    parts = urlsplit(url)
    secrets = [parts.password or ""]
    for raw in parts.query.split("&"):
        name, _, value = raw.partition("=")
        if unquote(name) in _SECRET_PARAMS:
            secrets.append(value)
    for secret in {s for raw in secrets for s in (raw, unquote(raw)) if s}:
        message = message.replace(secret, "***")
    return " ".join(message.split())


# -- the pool ----------------------------------------------------------------------------


class _StopWhenCancelled:
    """The maintenance queue, as a worker of ``_Pool`` sees it (the worker only ever
    calls ``get``): a cancelled worker gets ``CancelledError`` instead of more work."""

    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue

    async def get(self) -> Any:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        return await self._queue.get()


class _Pool(AsyncConnectionPool[psycopg.AsyncConnection[tuple[Any, ...]]]):
    """``AsyncConnectionPool`` whose workers stop when their loop shuts down.

    psycopg_pool 3.3's workers swallow a cancellation that lands while they connect (the
    connect error is logged and a retry scheduled), then wait for more work, so a loop that
    ends while the pool grows (``asyncio.run`` returning with the pool open) waits for them
    forever. These workers check, before waiting, whether they were cancelled."""

    @classmethod
    async def worker(cls, q: asyncio.Queue[Any]) -> None:
        await super().worker(_StopWhenCancelled(q))  # type: ignore[arg-type]


async def _abandon(pool: _Pool) -> None:
    """Close the idle connections of a pool whose event loop has finished. Its workers
    ended with that loop, and ``pool.close()`` would wait for them on it."""
    idle = list(pool._pool)
    pool._pool.clear()
    for conn in idle:
        await conn.close()


# -- the hot statements ------------------------------------------------------------------

# What ``acquire`` and ``get`` return (a commit returns only ``true``): the row in the layout
# of ``rows.py``, except ``parts`` as JSON text, so every column reads back from text.
_RETURNED = ", ".join(
    "array_to_json(parts)::text" if column == "parts" else column for column in _COLUMNS.split(", ")
)


@dataclass(frozen=True)
class _Statement:
    """A statement every append runs (``acquire`` and ``commit``; ``get`` too, as hot).

    These skip psycopg's cursors and adapters and go to libpq directly: prepared once per
    connection under ``name``, run with text parameters, a returned record's text row
    parsed by ``_text_record``. Through ``AsyncConnection.execute`` an acquire+commit pair cost
    230 µs of CPU, against 170 µs this way (on loopback, ``bench/state_stores.py``, the
    two measured in turn); every append pays it, on top of the two round trips and the
    two WAL flushes, which this cannot change."""

    name: bytes
    sql: bytes


async def _exchange(conn: psycopg.AsyncConnection[Any]) -> list[pq.abc.PGresult]:
    """The results of the statement just sent on ``conn``: what ``conn.wait(execute(…))``
    returns, for less CPU (one reader callback and one future; no generator, timer or
    clock: bench/README gives what that saves per acquire+commit).

    If the wait does not end (the task is cancelled, the connection fails), the statement
    is cancelled on the server, as psycopg would, but without waiting for that here: the
    connection is closed at once, its pool replaces it, and no late result can answer
    another statement."""
    pgconn = conn.pgconn
    if pgconn.flush():
        # The socket took only part of the message (never seen with these short ones):
        # psycopg's own loop waits for it to drain.
        return await conn.wait(execute(pgconn))
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[list[pq.abc.PGresult]] = loop.create_future()
    got: list[pq.abc.PGresult] = []
    fd = pgconn.socket
    watching = False

    def watch() -> None:
        nonlocal watching
        loop.add_reader(fd, readable)
        watching = True

    def unwatch() -> None:
        nonlocal watching
        if watching:
            loop.remove_reader(fd)
            watching = False

    def readable() -> None:
        # Off the loop before libpq reads: on a lost connection libpq closes the socket
        # itself, and a closed descriptor must not stay registered (its number is reused).
        unwatch()
        if waiter.done():
            return
        try:
            pgconn.consume_input()
            while not pgconn.is_busy():
                result = pgconn.get_result()
                if result is None:
                    waiter.set_result(got)
                    return
                got.append(result)
        except psycopg.Error as exc:
            # A session the server ended sends its reason first (a FATAL result), which
            # says more than libpq's "server closed the connection".
            if any(r.status == pq.ExecStatus.FATAL_ERROR for r in got):
                waiter.set_result(got)
            else:
                waiter.set_exception(exc)
            return
        watch()

    watch()
    try:
        return await waiter
    except BaseException:
        unwatch()
        if pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
            _cancel_soon(loop, pgconn)
        pgconn.finish()
        raise


def _cancel_soon(loop: asyncio.AbstractEventLoop, pgconn: pq.abc.PGconn) -> None:
    """Ask the server, from a worker thread, to stop the statement ``pgconn`` is running
    (a request that waits on a row lock would otherwise update it once the lock is free)."""
    try:
        cancel = pgconn.get_cancel()
    except psycopg.Error:
        return

    def send() -> None:
        with contextlib.suppress(psycopg.Error):
            cancel.cancel()

    with contextlib.suppress(RuntimeError):  # the loop's executor has shut down
        loop.run_in_executor(None, send)


class _Session:
    """What the store knows of one pooled connection: its prepared statements."""

    __slots__ = ("encoding", "prepared")

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self.prepared: set[bytes] = set()


def _param(value: str | int | float | None, encoding: str) -> bytes | None:
    """A parameter as PostgreSQL reads it from text."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode(encoding)
    if isinstance(value, float):
        # repr() round-trips exactly; PostgreSQL spells the special values its own way.
        if math.isfinite(value):
            return repr(value).encode()
        return b"NaN" if math.isnan(value) else b"Infinity" if value > 0 else b"-Infinity"
    return b"%d" % value


def _text_record(values: Sequence[bytes | None], encoding: str) -> UploadRecord:
    """An ``UploadRecord`` from a row of ``_RETURNED`` columns in text format (floats come
    back in their shortest exact form: ``extra_float_digits`` defaults to 1)."""
    (id_, length, received, metadata, partial, parts, created_at, expires_at, epoch, tail,
     tail_epoch, segments, assembled, last_client, last_node, client_switches,
     node_switches) = values  # fmt: skip
    assert id_ is not None and received is not None and metadata is not None
    assert created_at is not None and epoch is not None and tail_epoch is not None
    assert segments is not None and client_switches is not None and node_switches is not None
    return UploadRecord(
        id=id_.decode(encoding),
        length=None if length is None else int(length),
        offset=int(received),
        metadata=metadata_from_json(metadata.decode(encoding)),
        partial=partial == b"t",
        parts=None if parts is None else tuple(str(p) for p in json.loads(parts)),
        created_at=float(created_at),
        expires_at=None if expires_at is None else float(expires_at),
        epoch=int(epoch),
        tail=None if tail is None else tail.decode(encoding),
        tail_epoch=int(tail_epoch),
        segments=segments_from_json(segments.decode(encoding)),
        assembled=assembled == b"t",
        last_client=None if last_client is None else last_client.decode(encoding),
        last_node=None if last_node is None else last_node.decode(encoding),
        client_switches=int(client_switches),
        node_switches=int(node_switches),
    )


# -- the store ---------------------------------------------------------------------------


class PostgresStateStore:
    def __init__(self, url: str, *, durable: bool = False) -> None:
        settings = parse_url(url)
        self.url = url
        self.durable = durable  # synchronous releases (see the module docstring)
        self.settings = settings
        params = conninfo_to_dict(settings.conninfo)
        host = params.get("host") or params.get("hostaddr") or "the local socket"
        self._where = f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = max(2, math.ceil(settings.pool_timeout))
        if "application_name" not in params:
            self._kwargs["application_name"] = "tether"
        self._user_options = str(params.get("options") or "")

        s = f'"{settings.schema}"'
        t = f"{s}.{_TABLE}"
        self._schema_sql = s
        self._sql_create = (
            f"INSERT INTO {t} ({_COLUMNS}) VALUES ({', '.join(['%s'] * COLUMN_COUNT)})"
            " ON CONFLICT (id) DO NOTHING RETURNING id"
        )
        # The hot statements, with libpq's $n placeholders (see ``_Statement``).
        hot = f" RETURNING {_RETURNED}"
        self._hot_get = _Statement(
            b"tether_get", f"SELECT {_RETURNED} FROM {t} WHERE id = $1".encode()
        )
        # Joined with this, an UPDATE commits without waiting for the WAL flush (see the
        # module docstring): the setting lasts until the end of its own transaction.
        no_flush = " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_flush"
        self._hot_acquire = _Statement(
            b"tether_acquire_nf",
            (
                f"UPDATE {t} SET epoch = epoch + 1,"
                " client_switches = client_switches + (last_client IS NOT NULL"
                " AND $1::text IS NOT NULL AND last_client <> $1::text)::int,"
                " node_switches = node_switches"
                " + (last_node IS NOT NULL AND last_node <> $2::text)::int,"
                " last_client = COALESCE($1::text, last_client), last_node = $2::text"
                f"{no_flush} WHERE id = $3" + hot
            ).encode(),
        )
        commit = (
            f"UPDATE {t} SET received = $1, segments = $2, length = $3, expires_at = $4{{release}}"
            "{flush} WHERE id = $5 AND epoch = $6 AND received = $7 RETURNING true"
        )
        self._hot_commit = _Statement(
            b"tether_commit_nf", commit.format(release="", flush=no_flush).encode()
        )
        release = ", tail = $8, tail_epoch = epoch"
        self._hot_commit_release = _Statement(
            b"tether_commit_release", commit.format(release=release, flush="").encode()
        )
        self._hot_commit_release_nf = _Statement(
            b"tether_commit_release_nf",
            commit.format(release=release, flush=no_flush).encode(),
        )
        self._sessions: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _Session] = (
            weakref.WeakKeyDictionary()
        )
        self._sql_mark_assembled = f"UPDATE {t} SET assembled = true WHERE id = %s RETURNING id"
        self._sql_delete = f"DELETE FROM {t} WHERE id = %s RETURNING id"
        incomplete = "expires_at < %(now)s AND (length IS NULL OR received < length)"
        self._sql_expire = f"DELETE FROM {t} WHERE id = %(id)s AND {incomplete} RETURNING id"
        self._sql_expired = (
            f"SELECT id FROM {t} WHERE reap_at <= %(now)s AND {incomplete}"
            " ORDER BY reap_at LIMIT %(limit)s"
        )

        self._pool: _Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Lock | None = None
        self._schema_ready = False
        self._closed = False

    def __repr__(self) -> str:
        return f"PostgresStateStore({display_url(self.url)!r})"

    # -- connections ---------------------------------------------------------------------

    async def _get_pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        if self._loop is loop and self._pool is not None:
            return self._pool
        if self._closed:
            raise StoreUnavailable(f"{self!r} is closed")
        if self._loop is not loop:
            await self._leave_loop()
            self._loop = loop
            self._opening = asyncio.Lock()
        assert self._opening is not None
        async with self._opening:
            if self._pool is None:
                self._pool = await self._open_pool()
        return self._pool

    async def _leave_loop(self) -> None:
        """Drop the pool of the loop this handle was used on before, now finished."""
        if self._pool is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            raise RuntimeError(
                f"{self!r} is in use on another event loop, which has not finished;"
                " open one handle per event loop"
            )
        pool, self._pool = self._pool, None
        await _abandon(pool)

    async def _open_pool(self) -> _Pool:
        kwargs = self._kwargs
        if not self._schema_ready:
            synchronous = await self._prepare_schema()
            if synchronous == "off":
                options = f"{self._user_options} -c synchronous_commit=on".strip()
                self._kwargs = kwargs = {**kwargs, "options": options}
            self._schema_ready = True
        pool = _Pool(
            self.settings.conninfo,
            kwargs=kwargs,
            min_size=self.settings.pool_min,
            max_size=self.settings.pool_max,
            timeout=self.settings.pool_timeout,
            name=f"tether-{self.settings.schema}",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=self.settings.pool_timeout)
        except psycopg.OperationalError as exc:
            await pool.close()
            raise await self._unavailable(exc) from exc
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _prepare_schema(self) -> str:
        """Create or migrate the schema; return the sessions' ``synchronous_commit``."""
        s = self._schema_sql
        key = int.from_bytes(
            hashlib.blake2b(
                f"tether-schema:{self.settings.schema}".encode(), digest_size=8
            ).digest(),
            "big",
            signed=True,
        )
        try:
            conn = await psycopg.AsyncConnection.connect(self.settings.conninfo, **self._kwargs)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot connect to PostgreSQL at {self._where}: {_reason(exc, self.url)}"
            ) from exc
        try:
            async with conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
                cur = await conn.execute(
                    "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = %s)",
                    (self.settings.schema,),
                )
                exists = await cur.fetchone()
                if not (exists and exists[0]):
                    await conn.execute(f"CREATE SCHEMA {s}")
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {s}.{_VERSION_TABLE} ("
                    " version integer PRIMARY KEY,"
                    " migrated_at timestamptz NOT NULL DEFAULT now())"
                )
                cur = await conn.execute(
                    f"SELECT coalesce(max(version), 0) FROM {s}.{_VERSION_TABLE}"
                )
                row = await cur.fetchone()
                version = int(row[0]) if row else 0
                if version > SCHEMA_VERSION:
                    raise StoreUnavailable(
                        f"schema {self.settings.schema!r} at {self._where} is at version"
                        f" {version}, from a newer tether; this one knows up to"
                        f" {SCHEMA_VERSION}"
                    )
                for target in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _MIGRATIONS[target]:
                        await conn.execute(statement.format(s=s))
                    await conn.execute(
                        f"INSERT INTO {s}.{_VERSION_TABLE} (version) VALUES (%s)", (target,)
                    )
                cur = await conn.execute("SELECT current_setting('synchronous_commit')")
                setting = await cur.fetchone()
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot prepare schema {self.settings.schema!r} in PostgreSQL at"
                f" {self._where}: {_reason(exc, self.url)}"
            ) from exc
        return str(setting[0]) if setting else "on"

    async def _unavailable(self, exc: psycopg.OperationalError) -> StoreUnavailable:
        reason = _reason(exc, self.url)
        if isinstance(exc, PoolTimeout):
            # The pool only says it waited; a connection of our own says why.
            try:
                probe = await psycopg.AsyncConnection.connect(
                    self.settings.conninfo, **{**self._kwargs, "connect_timeout": 2}
                )
            except psycopg.Error as probe_exc:
                reason = f"{reason}; connecting: {_reason(probe_exc, self.url)}"
            else:
                await probe.close()
                reason = f"{reason} (all of pool_max={self.settings.pool_max} busy)"
        return StoreUnavailable(f"PostgreSQL at {self._where} is unavailable: {reason}")

    async def _one(self, query: str, params: Any) -> tuple[Any, ...] | None:
        pool = await self._get_pool()
        try:
            conn = await pool.getconn()
            try:
                cur = await conn.execute(query, params)
                return await cur.fetchone()
            finally:
                await pool.putconn(conn)
        except psycopg.OperationalError as exc:
            raise await self._unavailable(exc) from exc

    async def _all(self, query: str, params: Any) -> list[tuple[Any, ...]]:
        pool = await self._get_pool()
        try:
            conn = await pool.getconn()
            try:
                cur = await conn.execute(query, params)
                return await cur.fetchall()
            finally:
                await pool.putconn(conn)
        except psycopg.OperationalError as exc:
            raise await self._unavailable(exc) from exc

    async def _hot(
        self, statement: _Statement, params: Sequence[str | int | float | None]
    ) -> UploadRecord | None:
        """Run a hot statement (see ``_Statement``): the record it returns, or None."""
        result, encoding = await self._hot_result(statement, params)
        if result.ntuples == 0:
            return None
        return _text_record([result.get_value(0, c) for c in range(COLUMN_COUNT)], encoding)

    async def _hot_result(
        self, statement: _Statement, params: Sequence[str | int | float | None]
    ) -> tuple[pq.abc.PGresult, str]:
        """Run a hot statement: its result, and the encoding its text is in."""
        pool = await self._get_pool()
        try:
            conn = await pool.getconn()
            try:
                return await self._run(conn, statement, params)
            finally:
                await pool.putconn(conn)
        except psycopg.OperationalError as exc:
            raise await self._unavailable(exc) from exc

    async def _run(
        self,
        conn: psycopg.AsyncConnection[Any],
        statement: _Statement,
        params: Sequence[str | int | float | None],
    ) -> tuple[pq.abc.PGresult, str]:
        session = self._sessions.get(conn)
        if session is None:
            session = self._sessions[conn] = _Session(conn.info.encoding)
        values = [_param(value, session.encoding) for value in params]
        pgconn = conn.pgconn
        for attempt in (1, 2):
            if statement.name not in session.prepared:
                pgconn.send_prepare(statement.name, statement.sql)
                self._check(await _exchange(conn), session)
                session.prepared.add(statement.name)
            pgconn.send_query_prepared(statement.name, values)
            try:
                result = self._check(await _exchange(conn), session)
            except errors.InvalidSqlStatementName:
                # Deallocated behind our back (DISCARD ALL, a pooler handing us another
                # server session): prepare it again, once.
                session.prepared.clear()
                if attempt == 2:
                    raise
                continue
            return result, session.encoding
        raise AssertionError("unreachable")

    @staticmethod
    def _check(results: list[pq.abc.PGresult], session: _Session) -> pq.abc.PGresult:
        """The last result, or its error raised as psycopg would raise it."""
        result = results[-1]
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raise errors.error_from_result(result, encoding=session.encoding)
        return result

    # -- the StateStore protocol ---------------------------------------------------------

    async def create(self, record: UploadRecord) -> None:
        row = await self._one(
            self._sql_create,
            to_row(record, list),
        )
        if row is None:
            raise UploadExists(record.id)

    async def get(self, upload_id: str) -> UploadRecord | None:
        return await self._hot(self._hot_get, (upload_id,))

    async def acquire(self, upload_id: str, *, node: str, client: str | None) -> UploadRecord:
        record = await self._hot(self._hot_acquire, (client, node, upload_id))
        if record is None:
            raise KeyError(upload_id)
        return record

    async def commit(self, upload_id: str, commit: Commit) -> None:
        check_commit(commit)
        params: list[str | int | float | None] = [
            commit.offset,
            segments_to_json(commit.segments),
            commit.length,
            commit.expires_at,
            upload_id,
            commit.epoch,
            commit.expected_offset,
        ]
        statement = self._hot_commit
        if commit.release:
            params.append(commit.release_tail)
            statement = (
                self._hot_commit_release
                if self.durable or commit.completes or commit.settle
                else self._hot_commit_release_nf
            )
        result, _ = await self._hot_result(statement, params)
        if result.ntuples == 0:
            raise StaleLease(upload_id)

    async def mark_assembled(self, upload_id: str) -> None:
        await self._one(self._sql_mark_assembled, (upload_id,))

    async def delete(self, upload_id: str) -> bool:
        return await self._one(self._sql_delete, (upload_id,)) is not None

    async def expire(self, upload_id: str, now: float) -> bool:
        return await self._one(self._sql_expire, {"id": upload_id, "now": now}) is not None

    async def expired(self, now: float, limit: int) -> list[str]:
        rows = await self._all(self._sql_expired, {"now": now, "limit": limit})
        return [row[0] for row in rows]

    async def check(self) -> None:
        await self._one("SELECT 1", ())

    async def close(self) -> None:
        if self._pool is not None and self._loop is asyncio.get_running_loop():
            pool, self._pool = self._pool, None
            await pool.close()
        else:
            await self._leave_loop()
        self._closed = True


def open_from_url(url: str, *, durable: bool = False) -> PostgresStateStore:
    return PostgresStateStore(url, durable=durable)
