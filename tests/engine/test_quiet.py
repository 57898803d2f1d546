"""A body that goes quiet (``BodyQuiet``): the engine commits what it has and reads on, so
a takeover from another node, after the client lost its network silently, finds those
bytes acknowledged."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.engine.support import (
    INTERVAL,
    KiB,
    Stack,
    Stream,
    append,
    create,
    final_bytes,
    offset_of,
    pattern,
    sha1,
)
from tests.engine.test_direct import DirectStream, record_commits, send
from tests.engine.test_store_hints import PART, PartStore, part_engine
from tether.engine import BodyQuiet
from tether.protocol.errors import UploadError

QUIET_AT = INTERVAL + 8 * KiB  # off the interval grid, on the bodies' 4 KiB chunks


class QuietStream(Stream):
    """Goes quiet once after ``quiet_at`` bytes (and hangs there, with ``hang_at``)."""

    def __init__(self, data: bytes, *, quiet_at: int, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.quiet_at: int | None = quiet_at

    async def __anext__(self) -> bytes:
        if self.sent == self.quiet_at:
            self.quiet_at = None
            raise BodyQuiet
        return await super().__anext__()


class QuietDirect(DirectStream):
    """The same, spliced."""

    def __init__(self, data: bytes, *, quiet_at: int, **kwargs: Any) -> None:
        super().__init__(data, **kwargs)
        self.quiet_at: int | None = quiet_at

    async def move_into(self, fd: int, count: int) -> int:
        if self.sent == self.quiet_at:
            self.quiet_at = None
            raise BodyQuiet
        return await super().move_into(fd, count)


@pytest.mark.parametrize("kind", [QuietStream, QuietDirect], ids=["read", "spliced"])
async def test_a_takeover_finds_what_a_quiet_body_sent(
    file_stack: Stack, kind: type[QuietStream | QuietDirect]
) -> None:
    # A long period: only the quiet commit can have committed mid-body.
    first, second = file_stack.engine("n1", commit_period=3600.0), file_stack.engine("n2")
    source = pattern(4 * INTERVAL, 1)
    upload = await create(first, len(source))
    commits = record_commits(first)
    hung = kind(source, quiet_at=QUIET_AT, hang_at=QUIET_AT, after=b"", chunk=4 * KiB)
    task = asyncio.ensure_future(send(first, upload, 0, hung, size=len(source)))
    await asyncio.wait_for(hung.reached.wait(), 5)
    assert [(c.offset, c.release) for c in commits] == [(QUIET_AT, False)]
    assert await offset_of(second, upload.id) == QUIET_AT
    record = await append(second, upload.id, QUIET_AT, source[QUIET_AT:])
    assert record.complete
    hung.release()
    with pytest.raises(UploadError):
        await task
    assert await final_bytes(second, upload.id) == source


async def test_a_quiet_body_that_goes_on_completes_in_one_segment(file_stack: Stack) -> None:
    engine = file_stack.engine()
    source = pattern(3 * INTERVAL, 2)
    upload = await create(engine, len(source))
    commits = record_commits(engine)
    body = QuietStream(source, quiet_at=QUIET_AT, chunk=4 * KiB)
    record = await append(engine, upload.id, 0, body, content_length=len(source))
    assert record.complete and len(record.segments) == 1
    assert QUIET_AT in [c.offset for c in commits if not c.release]
    assert await final_bytes(engine, upload.id) == source


async def test_nothing_sent_since_the_last_commit_commits_nothing(file_stack: Stack) -> None:
    engine = file_stack.engine()
    source = pattern(2 * INTERVAL, 3)
    upload = await create(engine, len(source))
    commits = record_commits(engine)
    body = QuietStream(source, quiet_at=INTERVAL, chunk=4 * KiB)  # just after a commit
    await append(engine, upload.id, 0, body, content_length=len(source))
    assert [c.offset for c in commits] == [INTERVAL, 2 * INTERVAL]


async def test_a_checksummed_body_is_not_committed_in_part(file_stack: Stack) -> None:
    engine = file_stack.engine()
    source = pattern(2 * INTERVAL, 4)
    upload = await create(engine, len(source))
    commits = record_commits(engine)
    body = QuietStream(source, quiet_at=QUIET_AT, chunk=4 * KiB)
    record = await append(
        engine, upload.id, 0, body, content_length=len(source), checksum=sha1(source)
    )
    assert record.complete
    assert [c.offset for c in commits] == [len(source)]


async def test_a_store_that_commits_whole_parts_takes_no_quiet_commit() -> None:
    store = PartStore()
    engine = part_engine(store)
    source = pattern(100 * KiB, 5)
    upload = await create(engine, len(source))
    body = QuietStream(source, quiet_at=28 * KiB, chunk=4 * KiB)  # inside the second part
    record = await append(engine, upload.id, 0, body, content_length=len(source))
    assert record.complete
    assert store.flushed_at == [PART, 2 * PART, 3 * PART, 4 * PART, len(source)]


async def test_a_quiet_body_is_not_completed_before_its_end(file_stack: Stack) -> None:
    """All the bytes are there, but a chunked body has yet to send its end: the upload
    completes with the request's last commit, not with a quiet one."""
    engine = file_stack.engine()
    source = pattern(2 * INTERVAL + 4 * KiB, 6)
    upload = await create(engine, len(source))
    commits = record_commits(engine)
    body = QuietStream(source, quiet_at=len(source), chunk=4 * KiB)
    record = await append(engine, upload.id, 0, body)  # no Content-Length
    assert record.complete
    assert [(c.offset, c.release) for c in commits] == [
        (INTERVAL, False),
        (2 * INTERVAL, False),
        (len(source), True),
    ]
