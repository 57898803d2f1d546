"""The request body reader: a request stopped from outside starts no further step."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from tether.engine import BodyInterrupted, BodyQuiet
from tether.protocol.errors import UploadError
from tether.server.body import BodyReader


async def test_a_stopped_body_starts_no_step() -> None:
    started: list[str] = []

    async def receive() -> dict[str, Any]:
        started.append("receive")
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def move_into(fd: int, count: int) -> int:
        started.append("move_into")
        return 0

    reader = BodyReader(receive, 30.0, {"move_into": move_into})
    reader.interrupt(UploadError(409, "superseded"))
    with pytest.raises(BodyInterrupted):
        await reader.move_into(0, 10)
    with pytest.raises(BodyInterrupted):
        await anext(reader)
    gc.collect()  # a coroutine created and never awaited would warn here (an error)
    assert started == []


class _Trickle:
    """A client's body: chunks put in ``queue`` arrive; None ends the body."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def receive(self) -> dict[str, Any]:
        chunk = await self.queue.get()
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": chunk, "more_body": True}


async def test_a_silent_body_says_so_once_per_silence_and_reads_on() -> None:
    client = _Trickle()
    reader = BodyReader(client.receive, 30.0, quiet=0.05)
    client.queue.put_nowait(b"a")
    assert await anext(reader) == b"a"
    with pytest.raises(BodyQuiet):
        await asyncio.wait_for(anext(reader), 5)
    # Once per silence: the next read waits for the client, and gets what it sends.
    later = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0.2)
    assert not later.done()
    client.queue.put_nowait(b"b")
    assert await asyncio.wait_for(later, 5) == b"b"
    # A new chunk starts a new silence.
    with pytest.raises(BodyQuiet):
        await asyncio.wait_for(anext(reader), 5)
    client.queue.put_nowait(b"c")
    client.queue.put_nowait(None)
    assert [chunk async for chunk in reader] == [b"c"]


async def test_the_idle_timeout_counts_from_the_last_chunk_not_the_quiet_signal() -> None:
    client = _Trickle()
    reader = BodyReader(client.receive, 0.5, quiet=0.05)
    client.queue.put_nowait(b"a")
    assert await anext(reader) == b"a"
    started = asyncio.get_running_loop().time()
    with pytest.raises(BodyQuiet):
        await asyncio.wait_for(anext(reader), 5)
    with pytest.raises(BodyInterrupted) as stopped:
        await asyncio.wait_for(anext(reader), 5)
    assert stopped.value.error.status == 408
    assert asyncio.get_running_loop().time() - started < 5


async def test_a_stop_during_the_quiet_signal_wins() -> None:
    client = _Trickle()
    reader = BodyReader(client.receive, 30.0, quiet=0.05)
    pending = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0)
    reader._last -= 1.0  # the silence has lasted past ``quiet``...
    reader._watch()  # ...so the timer cancels the read to say so,
    reader.interrupt(UploadError(409, "superseded"))  # and a takeover comes before the read
    with pytest.raises(BodyInterrupted) as stopped:
        await pending
    assert stopped.value.error.status == 409


async def test_after_the_quiet_signal_the_timer_waits_for_the_idle_deadline() -> None:
    client = _Trickle()
    reader = BodyReader(client.receive, 30.0, quiet=0.05)
    client.queue.put_nowait(b"a")
    assert await anext(reader) == b"a"
    last = reader._last
    with pytest.raises(BodyQuiet):
        await asyncio.wait_for(anext(reader), 5)
    pending = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0)
    # Counted from the last chunk, not from the signal: the body may still stall 30 s.
    assert reader._timer is not None and reader._timer.when() == last + 30.0
    client.queue.put_nowait(None)
    with pytest.raises(StopAsyncIteration):
        await pending


async def test_a_cancellation_from_elsewhere_leaves_interrupts_working() -> None:
    client = _Trickle()
    reader = BodyReader(client.receive, 30.0, quiet=0.05)
    first = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0)
    reader._last -= 1.0
    reader._watch()  # the quiet signal's cancellation...
    first.cancel()  # ...and another, from whoever runs the task: it ends
    with pytest.raises(asyncio.CancelledError):
        await first
    # A read on another task is still stopped by an interrupt (a takeover).
    second = asyncio.ensure_future(anext(reader))
    await asyncio.sleep(0)
    reader.interrupt(UploadError(409, "superseded"))
    with pytest.raises(BodyInterrupted):
        await asyncio.wait_for(second, 5)
