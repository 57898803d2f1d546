"""SQLite state store: the embedded default.

Every operation is one statement (``UPDATE … WHERE epoch = ? AND received = ? RETURNING``),
so the compare-and-set rules hold even when several processes share the database file.
Statements run on the event loop thread: in WAL mode they take tens of microseconds, far
less than handing each one to a thread would cost (measured on workload C).
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tether.state.base import (
    Commit,
    StaleLease,
    StoreUnavailable,
    UploadExists,
    UploadRecord,
    check_commit,
    segments_to_json,
)
from tether.state.rows import COLUMN_COUNT, from_row, to_row
from tether.state.rows import COLUMNS as _COLUMNS

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    length INTEGER,
    received INTEGER NOT NULL DEFAULT 0,
    metadata TEXT NOT NULL DEFAULT '[]',
    partial INTEGER NOT NULL DEFAULT 0,
    parts TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    epoch INTEGER NOT NULL DEFAULT 0,
    tail TEXT,
    tail_epoch INTEGER NOT NULL DEFAULT -1,
    segments TEXT NOT NULL DEFAULT '[]',
    assembled INTEGER NOT NULL DEFAULT 0,
    last_client TEXT,
    last_node TEXT,
    client_switches INTEGER NOT NULL DEFAULT 0,
    node_switches INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS uploads_expiry ON uploads (expires_at)
    WHERE expires_at IS NOT NULL;
PRAGMA user_version = 1;
"""


# How long opening the database waits for other processes opening it too.
_TIMEOUT = 10.0
_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _while_busy(step: Callable[[], object], deadline: float) -> None:
    """Run ``step`` until no other connection stands in its way, or until ``deadline``.

    Several processes opening one new database at once (nodes sharing a file, started
    together) meet where SQLite refuses at once instead of calling the busy handler:
    switching to WAL while another connection is switching, and upgrading a read lock to
    a write lock while another connection waits to write. Both steps are idempotent."""
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            code = getattr(exc, "sqlite_errorcode", None)  # (set by SQLite's own errors)
            if code is None or code & 0xFF not in _BUSY or time.monotonic() >= deadline:
                raise
        time.sleep(random.uniform(0.005, 0.02))


def _create_schema(db: sqlite3.Connection) -> None:
    # IMMEDIATE takes the write lock first, under the busy handler, so that the statements
    # inside never need to upgrade a read lock (which SQLite refuses without waiting).
    try:
        db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _encode_parts(parts: tuple[str, ...]) -> str:
    return " ".join(parts)


def _decode_parts(text: str) -> tuple[str, ...]:
    return tuple(text.split(" ")) if text else ()


def _record(row: tuple[Any, ...]) -> UploadRecord:
    return from_row(row, _decode_parts)


class SqliteStateStore:
    def __init__(self, path: str, *, durable: bool = False) -> None:
        self.path = path
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._db = db = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_TIMEOUT
            )
            deadline = time.monotonic() + _TIMEOUT
            _while_busy(lambda: db.execute("PRAGMA journal_mode=WAL"), deadline)
            # NORMAL survives a process crash (the WAL is in the OS before COMMIT returns);
            # FULL also survives a machine crash, matching --durability machine.
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            _while_busy(lambda: _create_schema(db), deadline)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open SQLite database {path!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"SqliteStateStore({self.path!r})"

    def _one(self, sql: str, params: tuple[Any, ...]) -> tuple[Any, ...] | None:
        try:
            row: tuple[Any, ...] | None = self._db.execute(sql, params).fetchone()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc
        return row

    async def create(self, record: UploadRecord) -> None:
        try:
            self._db.execute(
                f"INSERT INTO uploads ({_COLUMNS}) VALUES ({', '.join('?' * COLUMN_COUNT)})",
                to_row(record, _encode_parts),
            )
        except sqlite3.IntegrityError as exc:
            raise UploadExists(record.id) from exc
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc

    async def get(self, upload_id: str) -> UploadRecord | None:
        row = self._one(f"SELECT {_COLUMNS} FROM uploads WHERE id = ?", (upload_id,))
        return None if row is None else _record(row)

    async def acquire(self, upload_id: str, *, node: str, client: str | None) -> UploadRecord:
        row = self._one(
            "UPDATE uploads SET epoch = epoch + 1,"
            " client_switches = client_switches + (last_client IS NOT NULL AND ?1 IS NOT NULL"
            " AND last_client != ?1),"
            " node_switches = node_switches + (last_node IS NOT NULL AND last_node != ?2),"
            " last_client = COALESCE(?1, last_client), last_node = ?2"
            f" WHERE id = ?3 RETURNING {_COLUMNS}",
            (client, node, upload_id),
        )
        if row is None:
            raise KeyError(upload_id)
        return _record(row)

    async def commit(self, upload_id: str, commit: Commit) -> None:
        check_commit(commit)
        release = ", tail = ?, tail_epoch = epoch" if commit.release else ""
        params: tuple[Any, ...] = (
            commit.offset,
            segments_to_json(commit.segments),
            commit.length,
            commit.expires_at,
        )
        if commit.release:
            params += (commit.release_tail,)
        row = self._one(
            "UPDATE uploads SET received = ?, segments = ?, length = ?, expires_at = ?"
            f"{release} WHERE id = ? AND epoch = ? AND received = ? RETURNING id",
            (*params, upload_id, commit.epoch, commit.expected_offset),
        )
        if row is None:
            raise StaleLease(upload_id)

    async def mark_assembled(self, upload_id: str) -> None:
        self._one("UPDATE uploads SET assembled = 1 WHERE id = ? RETURNING id", (upload_id,))

    async def delete(self, upload_id: str) -> bool:
        return self._one("DELETE FROM uploads WHERE id = ? RETURNING id", (upload_id,)) is not None

    async def expire(self, upload_id: str, now: float) -> bool:
        row = self._one(
            "DELETE FROM uploads WHERE id = ? AND expires_at < ?"
            " AND (length IS NULL OR received < length) RETURNING id",
            (upload_id, now),
        )
        return row is not None

    async def expired(self, now: float, limit: int) -> list[str]:
        try:
            rows = self._db.execute(
                "SELECT id FROM uploads WHERE expires_at < ?"
                " AND (length IS NULL OR received < length) LIMIT ?",
                (now, limit),
            ).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite: {exc}") from exc
        return [r[0] for r in rows]

    async def check(self) -> None:
        self._one("SELECT 1", ())

    async def close(self) -> None:
        self._db.close()


def sqlite_path_from_url(rest: str) -> str:
    """The part after ``sqlite://``: ``/./rel.db`` and ``/../rel.db`` are relative,
    ``//abs.db`` and ``/abs.db`` absolute, ``/:memory:`` in memory."""
    path = rest[1:] if rest.startswith("/") else rest
    if path.startswith(("./", "../", "/")) or path == ":memory:":
        return path
    return "/" + path


def open_from_url(url: str, *, durable: bool = False) -> SqliteStateStore:
    rest = url.split("://", 1)[1]
    if not rest or rest == "/":
        from tether.backends import BackendError

        raise BackendError(f"{url!r} names no database file")
    return SqliteStateStore(sqlite_path_from_url(rest), durable=durable)
