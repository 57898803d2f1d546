"""Cost of the state store on the upload path: one acquire plus one commit per append.

Usage::

    .venv/bin/python bench/state_stores.py [--pairs 2000] [URL ...]

Without URLs it measures SQLite (a temporary file), PostgreSQL
(``postgresql://postgres@127.0.0.1:5432/test``, in a throw-away schema) and Redis
(``redis://127.0.0.1:6379/0``, under a throw-away key prefix), skipping any that does not
answer. Prints microseconds per acquire+commit pair, the median of ``--reps`` runs, and how
much of it was this process's CPU time: on a busy machine the wall time wanders, the CPU
time much less.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from typing import Any

from tether.backends import open_state, redact
from tether.state.base import Commit, Segment, StateStore, UploadRecord


def default_urls(tmp: str) -> list[str]:
    tag = secrets.token_hex(4)
    return [
        f"sqlite:///{tmp}/state.db",
        f"postgresql://postgres@127.0.0.1:5432/test?schema=bench_{tag}",
        f"redis://127.0.0.1:6379/0?prefix=bench:{tag}:",
    ]


async def pair_cost(store: StateStore, pairs: int) -> tuple[float, float]:
    """Microseconds per acquire+commit pair: wall time, and this process's CPU time (the
    client's share, which the store's code decides; the rest is the server and the wire)."""
    upload_id = secrets.token_hex(16)
    await store.create(UploadRecord(id=upload_id, length=10**15, created_at=time.time()))
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(pairs):
        record = await store.acquire(upload_id, node="bench", client="127.0.0.1")
        offset = record.offset + 65536
        await store.commit(
            upload_id,
            Commit(
                epoch=record.epoch,
                expected_offset=record.offset,
                offset=offset,
                segments=(Segment("e1", 0, offset),),
                length=record.length,
                expires_at=time.time() + 3600,
                release=True,
                release_tail="e1",
            ),
        )
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    await store.delete(upload_id)
    return elapsed / pairs * 1e6, cpu / pairs * 1e6


async def measure(url: str, pairs: int, reps: int) -> str:
    store = open_state(url)
    try:
        await store.check()
    except Exception as exc:
        return f"{redact(url)}: skipped ({exc})"
    try:
        results = [await pair_cost(store, pairs) for _ in range(reps)]
    finally:
        await drop(url)
        await store.close()
    walls = [wall for wall, _ in results]
    cpu = statistics.median(cpu for _, cpu in results)
    return (
        f"{redact(url)}: {statistics.median(walls):.0f} us per acquire+commit"
        f" (min {min(walls):.0f}, max {max(walls):.0f}), {cpu:.0f} us of it client CPU"
    )


async def drop(url: str) -> None:
    """Remove the throw-away schema or keys the default URLs created."""
    if url.startswith("postgresql://") and "schema=bench_" in url:
        import psycopg

        schema = url.split("schema=", 1)[1]
        async with await psycopg.AsyncConnection.connect(
            url.split("?", 1)[0], autocommit=True
        ) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    elif url.startswith("redis://") and "prefix=bench:" in url:
        import redis.asyncio as aioredis

        prefix = url.split("prefix=", 1)[1]
        client = aioredis.from_url(url.split("?", 1)[0])
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "urls", nargs="*", help="state store URLs (default: sqlite, postgresql, redis)"
    )
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    try:  # what tether serve runs on
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    with tempfile.TemporaryDirectory() as tmp:
        for url in args.urls or default_urls(tmp):
            print(run(measure(url, args.pairs, args.reps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
