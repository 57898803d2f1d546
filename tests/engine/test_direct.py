"""Bodies moved into the segment file without passing through the engine (a spliced socket):
the same commits, fencing and failures as bodies read chunk by chunk."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from tests.contract.backends import MEMORY_BYTES, MEMORY_STATE
from tests.engine.support import (
    INTERVAL,
    KiB,
    Stack,
    Stream,
    append_command,
    create,
    final_bytes,
    offset_of,
    open_stack,
    pattern,
    sha1,
)
from tether.engine import BodyInterrupted, UploadService
from tether.protocol.errors import UploadError
from tether.state.base import Commit, UploadRecord


class DirectStream(Stream):
    """A body that writes its bytes into the file it is given, up to ``chunk`` per call, as
    ``server/protocol.py`` does with splice(2). ``full_at``: the file "fills up" there."""

    direct = True

    def __init__(self, data: bytes, *, full_at: int | None = None, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.full_at = full_at
        self.moves: list[int] = []  # the ``count`` of each call

    async def move_into(self, fd: int, count: int) -> int:
        self.moves.append(count)
        if self._stop is not None:
            raise BodyInterrupted(self._stop)
        if self.fail_at is not None and self.sent >= self.fail_at:
            raise BodyInterrupted(self.fail_with)
        if self.hang_at is not None and self.sent == self.hang_at:
            # As Stream: wait like a half-open connection, then send ``after`` if given.
            self.hang_at = None
            self.reached.set()
            await self._wake.wait()
            if self._stop is not None:
                raise BodyInterrupted(self._stop)
            if self.after is not None:
                self.data = self.data[: self.sent] + self.after
        end = min(self.sent + count, self.sent + self.chunk, len(self.data))
        if self.fail_at is not None:
            end = min(end, self.fail_at)
        if self.hang_at is not None:
            end = min(end, self.hang_at)
        if self.full_at is not None and end > self.full_at:
            os.write(fd, self.data[self.sent : self.full_at])  # a short write, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device")
        piece = self.data[self.sent : end]
        view = memoryview(piece)
        while view:
            view = view[os.write(fd, view) :]
        self.sent = end
        return len(piece)


@pytest.fixture
def stack(file_stack: Stack) -> Stack:
    return file_stack


def record_commits(engine: UploadService) -> list[Commit]:
    commits: list[Commit] = []
    original = engine.state.commit

    async def commit(upload_id: str, change: Commit) -> None:
        commits.append(change)
        await original(upload_id, change)

    engine.state.commit = commit  # type: ignore[method-assign]
    return commits


async def send(
    engine: UploadService, upload: UploadRecord, at: int, body: Stream, *, size: int, **kw: Any
) -> UploadRecord:
    command = append_command(upload.id, at, content_length=size, **kw)
    return (await engine.append(command, body, client="c")).record


async def test_direct_bodies_commit_on_interval_boundaries_and_complete(stack: Stack) -> None:
    engine = stack.engine()
    source = pattern(10 * INTERVAL + 123, 3)
    upload = await create(engine, len(source))
    commits = record_commits(engine)
    cut = 3 * INTERVAL + 77  # the second body starts mid-interval
    first = DirectStream(source[:cut], chunk=40 * KiB)
    await send(engine, upload, 0, first, size=cut)
    second = DirectStream(source[cut:], chunk=1000 * KiB)
    record = await send(engine, upload, cut, second, size=len(source) - cut)
    assert record.complete and record.offset == len(source)
    # Every mid-body commit falls on a multiple of the interval; none is skipped.
    midway = [c.offset for c in commits if not c.release]
    assert midway == [i * INTERVAL for i in range(1, 11)]
    # No call was asked to move past the next boundary.
    assert max(second.moves) <= INTERVAL
    assert await final_bytes(engine, upload.id) == source


async def test_a_dropped_direct_body_keeps_every_byte_it_moved(stack: Stack) -> None:
    engine = stack.engine()
    source = pattern(6 * INTERVAL, 4)
    upload = await create(engine, len(source))
    dropped = DirectStream(source, chunk=7 * KiB, fail_at=2 * INTERVAL + 5000)
    with pytest.raises(UploadError):
        await send(engine, upload, 0, dropped, size=len(source))
    at = await offset_of(engine, upload.id)
    assert at == 2 * INTERVAL + 5000
    await send(engine, upload, at, DirectStream(source[at:]), size=len(source) - at)
    assert await final_bytes(engine, upload.id) == source


async def test_a_full_disk_mid_direct_body_answers_507_and_keeps_what_was_committed(
    stack: Stack,
) -> None:
    engine = stack.engine()
    source = pattern(5 * INTERVAL, 5)
    upload = await create(engine, len(source))
    full = DirectStream(source, chunk=16 * KiB, full_at=3 * INTERVAL + 999)
    with pytest.raises(UploadError) as failure:
        await send(engine, upload, 0, full, size=len(source))
    assert failure.value.status == 507
    at = await offset_of(engine, upload.id)
    # The bytes of the failed move are not acknowledged (nor anything a short write left).
    assert 3 * INTERVAL <= at <= 3 * INTERVAL + 999 - 1
    await send(engine, upload, at, DirectStream(source[at:]), size=len(source) - at)
    assert await final_bytes(engine, upload.id) == source


@pytest.mark.parametrize("why", ["checksum", "unknown length"])
async def test_checksummed_or_unsized_bodies_are_read_as_chunks(stack: Stack, why: str) -> None:
    engine = stack.engine()
    source = pattern(3 * INTERVAL, 6)
    upload = await create(engine, len(source))
    body = DirectStream(source)
    if why == "checksum":  # the hash needs the bytes
        record = await send(engine, upload, 0, body, size=len(source), checksum=sha1(source))
    else:  # the engine cannot know the body fits the upload
        record = await send(engine, upload, 0, body, size=None)  # type: ignore[arg-type]
    assert record.complete
    assert body.moves == []  # the bytes came through __anext__
    assert await final_bytes(engine, upload.id) == source


async def test_stores_without_direct_writes_read_chunks(tmp_path: Path) -> None:
    stack = open_stack(MEMORY_STATE, MEMORY_BYTES, tmp_path)
    try:
        engine = stack.engine()
        source = pattern(3 * INTERVAL + 1, 8)
        upload = await create(engine, len(source))
        body = DirectStream(source)
        record = await send(engine, upload, 0, body, size=len(source))
        assert record.complete
        assert body.moves == []
        assert await final_bytes(engine, upload.id) == source
    finally:
        await stack.aclose()


@pytest.mark.parametrize("kind", [DirectStream, Stream])
async def test_a_body_ending_on_a_boundary_is_committed_once_there(
    stack: Stack, kind: type[Stream]
) -> None:
    engine = stack.engine()
    source = pattern(4 * INTERVAL, 9)
    upload = await create(engine, len(source))
    commits = record_commits(engine)
    await send(engine, upload, 0, kind(source[: 2 * INTERVAL], chunk=24 * KiB), size=2 * INTERVAL)
    # One commit at the first boundary; the second is the body's end: the release only.
    assert [(c.offset, c.release) for c in commits] == [(INTERVAL, False), (2 * INTERVAL, True)]
    rest = kind(source[2 * INTERVAL :], chunk=24 * KiB)
    record = await send(engine, upload, 2 * INTERVAL, rest, size=2 * INTERVAL)
    assert record.complete
    assert await final_bytes(engine, upload.id) == source


async def test_a_commit_refused_mid_body_stops_the_body(stack: Stack) -> None:
    engine = stack.engine()
    source = pattern(6 * INTERVAL, 7)
    upload = await create(engine, len(source))
    body = DirectStream(source, chunk=4 * KiB)
    original = engine.state.commit

    async def taken_over(upload_id: str, change: Commit) -> UploadRecord:
        if not change.release and change.offset == 2 * INTERVAL:
            await engine.state.acquire(upload_id, node="elsewhere", client=None)
        return await original(upload_id, change)

    engine.state.commit = taken_over  # type: ignore[method-assign]
    with pytest.raises(UploadError) as failure:
        await send(engine, upload, 0, body, size=len(source))
    assert failure.value.status == 409
    assert body.sent == 2 * INTERVAL  # stopped there, not read to the end
    assert await offset_of(engine, upload.id) == INTERVAL


async def test_only_the_release_that_first_gives_the_length_asks_to_settle(stack: Stack) -> None:
    """A length lost with a state store's crash could not be repaired by re-sending bytes,
    so the commit that records it asks the store to make it survive one."""
    engine = stack.engine()
    source = pattern(3 * INTERVAL, 8)
    upload = await create(engine, None)  # deferred length
    commits = record_commits(engine)
    await send(engine, upload, 0, DirectStream(source[:INTERVAL]), size=INTERVAL)
    cut = 2 * INTERVAL + 5
    body = DirectStream(source[INTERVAL:cut])
    await send(engine, upload, INTERVAL, body, size=cut - INTERVAL, length=len(source))
    await send(engine, upload, cut, DirectStream(source[cut:]), size=len(source) - cut)
    assert [(c.release, c.length, c.settle) for c in commits] == [
        (True, None, False),
        (False, len(source), False),  # mid-body: the release after it settles both
        (True, len(source), True),
        (True, len(source), False),  # completes it: the store flushes that anyway
    ]
    assert await final_bytes(engine, upload.id) == source


class _Abandonable:
    """A segment writer that records the engine's ``abandon`` call."""

    def __init__(self, inner: Any, calls: list[str]) -> None:
        self._inner, self._calls = inner, calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def abandon(self) -> None:
        self._calls.append("abandon")


async def test_a_writer_whose_commit_is_refused_is_abandoned(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = stack.engine()
    source = pattern(3 * INTERVAL, 9)
    upload = await create(engine, len(source))
    calls: list[str] = []
    opened = engine.storage.open_segment

    async def open_segment(*args: Any, **kwargs: Any) -> Any:
        return _Abandonable(await opened(*args, **kwargs), calls)

    monkeypatch.setattr(engine.storage, "open_segment", open_segment)
    await send(engine, upload, 0, DirectStream(source[:INTERVAL]), size=INTERVAL)
    assert calls == []
    original = engine.state.commit

    async def taken_over(upload_id: str, change: Commit) -> UploadRecord:
        await engine.state.acquire(upload_id, node="elsewhere", client=None)
        return await original(upload_id, change)

    engine.state.commit = taken_over  # type: ignore[method-assign]
    with pytest.raises(UploadError):
        await send(engine, upload, INTERVAL, DirectStream(source[INTERVAL:]), size=2 * INTERVAL)
    assert calls == ["abandon"]
