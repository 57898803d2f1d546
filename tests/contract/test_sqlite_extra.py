"""SQLite-specific behaviour beyond the shared contract: several processes opening one
new database file at once (nodes sharing a file, started together)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from tether.state import sqlite as sqlite_store
from tether.state.sqlite import SqliteStateStore

OPENERS = 4
ROUNDS = 25


def _open(path: str, barrier: Barrier, results: Any) -> None:
    barrier.wait(timeout=30)
    try:
        SqliteStateStore(path)
    except Exception as exc:
        results.put(repr(exc))
    else:
        results.put("ok")


def test_processes_open_one_new_database_at_once(tmp_path: Path) -> None:
    # Before the retries, about one round in five had a process refused with "database is
    # locked" at once (switching to WAL, or upgrading a lock to create the schema).
    context = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(ROUNDS):
        path = str(tmp_path / f"state-{round_}.db")
        barrier = context.Barrier(OPENERS)
        results = context.Queue()
        processes = [
            context.Process(target=_open, args=(path, barrier, results), daemon=True)
            for _ in range(OPENERS)
        ]
        try:
            for process in processes:
                process.start()
            outcomes = [results.get(timeout=30) for _ in processes]
            for process in processes:
                process.join(timeout=30)
                assert process.exitcode == 0
        finally:
            for process in processes:
                if process.is_alive():
                    process.kill()
        failures += [outcome for outcome in outcomes if outcome != "ok"]
    assert failures == []
    # And every process saw the same database: WAL mode, the schema once.
    db = sqlite3.connect(str(tmp_path / "state-0.db"))
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
    finally:
        db.close()


def _busy(code: int = sqlite3.SQLITE_BUSY) -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database is locked")
    exc.sqlite_errorcode = code
    return exc


def test_a_busy_step_is_retried_until_it_runs() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise _busy(sqlite3.SQLITE_BUSY if len(calls) == 1 else sqlite3.SQLITE_BUSY_RECOVERY)

    sqlite_store._while_busy(step, time.monotonic() + 5)
    assert len(calls) == 3


def test_other_errors_and_a_passed_deadline_are_raised() -> None:
    def broken() -> None:
        raise sqlite3.OperationalError("no such table: uploads")

    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        sqlite_store._while_busy(broken, time.monotonic() + 5)

    calls = []

    def busy() -> None:
        calls.append(1)
        raise _busy()

    with pytest.raises(sqlite3.OperationalError, match="locked"):
        sqlite_store._while_busy(busy, time.monotonic() + 0.5)
    assert 2 <= len(calls) <= 101  # a retry every 5-20 ms until the deadline
