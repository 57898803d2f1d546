"""The commit period: a body crossing interval boundaries faster than ``commit_period``
commits at the first boundary the period has passed, not at each one. Time here is the
stack's clock, advanced by the bodies as their chunks arrive."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.engine.support import (
    INTERVAL,
    Clock,
    Stack,
    Stream,
    append,
    create,
    final_bytes,
    offset_of,
    pattern,
)
from tests.engine.test_direct import DirectStream, record_commits, send
from tether.protocol.errors import UploadError

PERIOD = 1.0
TICK = 0.1  # per quarter interval: an interval takes 0.4 s, so every third one commits
EVERY_THIRD = [3 * INTERVAL, 6 * INTERVAL, 9 * INTERVAL]


class Ticking(Stream):
    """A body whose every chunk arrives ``tick`` seconds after the one before."""

    def __init__(self, data: bytes, clock: Clock, tick: float, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.clock, self.tick = clock, tick

    async def __anext__(self) -> bytes:
        piece = await super().__anext__()
        self.clock.now += self.tick
        return piece


class TickingDirect(DirectStream):
    def __init__(self, data: bytes, clock: Clock, tick: float, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.clock, self.tick = clock, tick

    async def move_into(self, fd: int, count: int) -> int:
        moved = await super().move_into(fd, count)
        self.clock.now += self.tick
        return moved


@pytest.mark.parametrize("kind", [Ticking, TickingDirect], ids=["read", "spliced"])
async def test_a_fast_body_commits_once_the_period_has_passed(
    file_stack: Stack, kind: type[Ticking | TickingDirect]
) -> None:
    engine = file_stack.engine(commit_period=PERIOD)
    source = pattern(10 * INTERVAL + 123, 1)
    upload = await create(engine, len(source))
    commits = record_commits(engine)
    body = kind(source, file_stack.clock, TICK, chunk=INTERVAL // 4)
    record = await send(engine, upload, 0, body, size=len(source))
    assert record.complete
    assert [c.offset for c in commits if not c.release] == EVERY_THIRD
    if isinstance(body, TickingDirect):
        assert body.moves and max(body.moves) <= INTERVAL  # never past the next boundary
    assert await final_bytes(engine, upload.id) == source


async def test_a_slow_body_commits_at_every_boundary(file_stack: Stack) -> None:
    engine = file_stack.engine(commit_period=PERIOD)
    source = pattern(4 * INTERVAL, 3)
    upload = await create(engine, len(source))
    commits = record_commits(engine)
    body = Ticking(source, file_stack.clock, PERIOD, chunk=INTERVAL // 2)
    await append(engine, upload.id, 0, body, content_length=len(source))
    assert [c.offset for c in commits if not c.release] == [INTERVAL, 2 * INTERVAL, 3 * INTERVAL]


async def test_what_a_hung_body_left_uncommitted_is_sent_again(file_stack: Stack) -> None:
    """The price of the period: bytes past the last commit of a request that hangs are lost
    to a takeover from another node, as they were before within one interval."""
    first, second = file_stack.engine("n1", commit_period=PERIOD), file_stack.engine("n2")
    source = pattern(8 * INTERVAL, 4)
    upload = await create(first, len(source))
    hung = Ticking(source, file_stack.clock, TICK, chunk=INTERVAL // 4, hang_at=5 * INTERVAL)
    task = asyncio.ensure_future(append(first, upload.id, 0, hung, content_length=len(source)))
    await asyncio.wait_for(hung.reached.wait(), 5)
    # 1.2 s had passed at the third boundary; the fourth and fifth came too soon.
    assert await offset_of(second, upload.id) == 3 * INTERVAL
    record = await append(second, upload.id, 3 * INTERVAL, source[3 * INTERVAL :])
    assert record.complete
    hung.release()
    with pytest.raises(UploadError):
        await task
    assert await final_bytes(second, upload.id) == source
