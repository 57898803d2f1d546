"""Expiry: reapers on every node at once remove each expired upload once, never a live one."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.engine.support import (
    KiB,
    Stack,
    Stream,
    append,
    create,
    final_bytes,
    pattern,
    start,
)
from tether.engine import UploadService
from tether.protocol.errors import UploadError
from tether.state.base import StateStore
from tether.storage.filesystem import FilesystemByteStore
from tether.storage.memory import MemoryByteStore

AFTER = 100.0  # seconds an idle upload lives


def stores_anything(engine: UploadService, upload_id: str) -> bool:
    storage = engine.storage
    if isinstance(storage, FilesystemByteStore):
        return (storage.root / upload_id).exists()
    assert isinstance(storage, MemoryByteStore)
    return any(key[0] == upload_id for key in storage.objects)


async def test_reapers_on_two_nodes_remove_each_expired_upload_once(stack: Stack) -> None:
    first = stack.engine("n1", expire_after=AFTER)
    second = stack.engine("n2", expire_after=AFTER)
    start_time = stack.clock.now
    expired = []
    for i in range(8):
        upload = await create(first, 50 * KiB)
        if i % 2:
            await append(second, upload.id, 0, pattern(10 * KiB, i))
        expired.append(upload.id)
    complete = await create(first, 5)
    await append(first, complete.id, 0, b"12345")
    stack.clock.now = start_time + AFTER / 2
    refreshed = await create(first, 20 * KiB)  # created later
    touched = expired.pop()  # appended to later: its expiry moves on
    await append(first, touched, 10 * KiB, pattern(1 * KiB))
    stack.clock.now = start_time + AFTER + 1

    counts = await asyncio.gather(first.reap_expired(), second.reap_expired())
    assert sum(counts) == len(expired)
    for upload_id in expired:
        assert await first.state.get(upload_id) is None
        assert not stores_anything(second, upload_id)
        with pytest.raises(UploadError) as info:
            await second.head(upload_id)
        assert info.value.status == 404
    assert list(await asyncio.gather(first.reap_expired(), second.reap_expired())) == [0, 0]

    assert await final_bytes(second, complete.id) == b"12345"
    record = await append(second, refreshed.id, 0, pattern(20 * KiB, 9))
    assert record.complete
    record = await append(second, touched, 11 * KiB, pattern(39 * KiB, 3))
    assert record.complete


async def test_an_expired_upload_answers_gone_until_reaped(stack: Stack) -> None:
    engine = stack.engine(expire_after=AFTER)
    upload = await create(engine, 10)
    stack.clock.now += AFTER + 1
    with pytest.raises(UploadError) as info:
        await engine.head(upload.id)
    assert info.value.status == 410
    with pytest.raises(UploadError) as info:
        await append(engine, upload.id, 0, b"0123456789")
    assert info.value.status == 410
    assert await engine.reap_expired() == 1


class AfterListing:
    """A state store that runs ``hook`` between a reaper listing expired uploads and its
    deleting them: the window in which another node's append may commit."""

    def __init__(self, inner: StateStore, hook: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.hook = hook

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def expired(self, now: float, limit: int) -> list[str]:
        found = await self.inner.expired(now, limit)
        await self.hook()
        return found


async def test_a_reaper_racing_a_live_append_never_deletes_it(stack: Stack) -> None:
    writer = stack.engine("n1", expire_after=AFTER)
    source = pattern(90 * KiB, 4)
    upload = await create(writer, len(source))
    await append(writer, upload.id, 0, source[: 30 * KiB])
    # A request starts in time, then its bytes arrive slowly, past the expiry.
    slow = Stream(source[30 * KiB :], hang_at=0)
    task = await start(append(writer, upload.id, 30 * KiB, slow))
    await asyncio.wait_for(slow.reached.wait(), 5)
    stack.clock.now += AFTER + 1

    async def let_the_append_commit() -> None:
        slow.release()
        await task

    reaper = stack.engine(
        "n2", expire_after=AFTER, state=AfterListing(stack.states.open(), let_the_append_commit)
    )
    assert await reaper.reap_expired() == 0
    assert task.result().complete
    assert await final_bytes(reaper, upload.id) == source
