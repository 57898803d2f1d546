"""Cost of the state store on the upload path: one acquire plus one commit per append.

Usage::

    .venv/bin/python bench/state_stores.py [--pairs 2000] [URL ...]

Without URLs it measures SQLite (a temporary file), PostgreSQL
(``postgresql://postgres@127.0.0.1:5432/test``, in a throw-away schema) and Redis
(``redis://127.0.0.1:6379/0``, under a throw-away key prefix), skipping any that does not
answer. Prints microseconds per acquire+commit pair, the median of ``--reps`` runs, and how
much of it was this process's CPU time: on a busy machine the wall time wanders, the CPU
time much less.

Each store is measured twice: with the pairs back to back, and with ``--idle`` µs of sleep
before each pair (not counted), as a node of a cluster idles between the requests of one
client that round-robin sends elsewhere. On a virtual machine the second is much slower:
a CPU that idled computes more slowly for a while (the client's own CPU time grows too),
and each round trip waits for an idle CPU to wake.
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


async def pair_cost(store: StateStore, pairs: int, idle: float) -> tuple[float, float]:
    """Microseconds per acquire+commit pair: wall time, and this process's CPU time (the
    client's share, which the store's code decides; the rest is the server and the wire).
    ``idle`` seconds of sleep before each pair are not counted."""
    upload_id = secrets.token_hex(16)
    await store.create(UploadRecord(id=upload_id, length=10**15, created_at=time.time()))
    elapsed = cpu = 0.0
    for _ in range(pairs):
        if idle:
            # A blocking sleep, so the process (and, if nothing else runs, its CPU) idles:
            # the event loop's timers could not time a sleep this short.
            time.sleep(idle)  # noqa: ASYNC251
        started, cpu_started = time.perf_counter(), time.process_time()
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
        elapsed += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
    await store.delete(upload_id)
    return elapsed / pairs * 1e6, cpu / pairs * 1e6


async def measure(url: str, pairs: int, reps: int, idle: float) -> str:
    store = open_state(url)
    try:
        await store.check()
    except Exception as exc:
        return f"{redact(url)}: skipped ({exc})"
    pauses = (0.0, idle) if idle else (0.0,)
    results: dict[float, list[tuple[float, float]]] = {pause: [] for pause in pauses}
    try:
        for _ in range(reps):
            for pause in pauses:  # in turn, so that a drift of the machine hits both alike
                results[pause].append(await pair_cost(store, pairs, pause))
    finally:
        await drop(url)
        await store.close()
    lines = [f"{redact(url)}:"]
    for pause, runs in results.items():
        walls = [wall for wall, _ in runs]
        cpu = statistics.median(cpu for _, cpu in runs)
        how = f"after {pause * 1e6:.0f} us idle" if pause else "back to back"
        lines.append(
            f"  {how:<18} {statistics.median(walls):5.0f} us per acquire+commit"
            f" (min {min(walls):.0f}, max {max(walls):.0f}), {cpu:.0f} us of it client CPU"
        )
    return "\n".join(lines)


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
    parser.add_argument(
        "--idle",
        type=float,
        default=500.0,
        help="microseconds of sleep before each pair in the second measurement (0: none)",
    )
    args = parser.parse_args(argv)
    try:  # what tether serve runs on
        import uvloop

        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    with tempfile.TemporaryDirectory() as tmp:
        for url in args.urls or default_urls(tmp):
            print(run(measure(url, args.pairs, args.reps, args.idle / 1e6)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
