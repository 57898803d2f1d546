"""A full or failing disk under the engine (SQLite + filesystem): acknowledged bytes stay
intact, nothing unflushed is acknowledged, and the upload resumes once there is room."""

from __future__ import annotations

import asyncio
import errno
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.contract.backends import FILE_BYTES, SQLITE_STATE
from tests.contract.faults import FailingSync, FullDevice
from tests.engine.support import (
    INTERVAL,
    KiB,
    Stack,
    Stream,
    append,
    create,
    final_bytes,
    offset_of,
    open_stack,
    pattern,
)
from tether.protocol.errors import UploadError
from tether.storage.base import StorageFull


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    opened = open_stack(SQLITE_STATE, FILE_BYTES, tmp_path)
    yield opened
    await opened.aclose()


@pytest.fixture
def device(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FullDevice:
    return FullDevice(monkeypatch, tmp_path / "bytes", errno.ENOSPC)


@pytest.mark.parametrize("durable", [False, True])
async def test_a_full_disk_answers_507_keeps_the_bytes_before_and_resumes(
    stack: Stack, device: FullDevice, durable: bool
) -> None:
    engine = stack.engine(durable=durable)
    source = pattern(300 * KiB, 1)
    upload = await create(engine, len(source))
    device.fill(room=INTERVAL + 10 * KiB + 123)  # the chunk after 74 KiB fits only in part
    with pytest.raises(UploadError) as info:
        await append(engine, upload.id, 0, Stream(source, chunk=2 * KiB))
    assert info.value.status == 507
    assert await offset_of(engine, upload.id) == INTERVAL + 10 * KiB
    device.free()
    record = await append(engine, upload.id, INTERVAL + 10 * KiB, source[INTERVAL + 10 * KiB :])
    assert record.complete and len(record.segments) == 1
    assert await final_bytes(engine, upload.id) == source


async def test_a_full_disk_while_assembling_leaves_the_upload_to_finish_later(
    stack: Stack, device: FullDevice
) -> None:
    first, second = stack.engine("n1"), stack.engine("n2")
    source = pattern(100 * KiB, 2)
    upload = await create(first, len(source))
    hung = Stream(source, hang_at=INTERVAL, after=b"")
    task = asyncio.ensure_future(append(first, upload.id, 0, hung))
    await asyncio.wait_for(hung.reached.wait(), 5)
    device.fill_copies()  # after a takeover there are two segments: assembly copies them
    with pytest.raises(StorageFull):
        await append(second, upload.id, INTERVAL, source[INTERVAL:])
    hung.release()
    with pytest.raises(UploadError):
        await task
    device.free()
    assert (await second.head(upload.id)).complete
    assert await final_bytes(second, upload.id) == source


async def test_a_failed_flush_answers_507_and_acknowledges_nothing_unflushed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = stack.engine(durable=True)
    sync = FailingSync(monkeypatch, errno.ENOSPC)
    source = pattern(200 * KiB, 3)
    upload = await create(engine, len(source))
    await append(engine, upload.id, 0, source[: 10 * KiB])
    sync.fail(times=1)  # the first periodic commit's fdatasync
    with pytest.raises(UploadError) as info:
        await append(engine, upload.id, 10 * KiB, source[10 * KiB :])
    assert info.value.status == 507
    assert await offset_of(engine, upload.id) == 10 * KiB
    record = await append(engine, upload.id, 10 * KiB, source[10 * KiB :])
    assert record.complete
    assert await final_bytes(engine, upload.id) == source


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO], ids=["ENOSPC", "EIO"])
async def test_a_failed_flush_never_acknowledges_the_unflushed_bytes(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Whatever the request answers, the bytes whose fdatasync failed are not committed,
    even though a second fdatasync (in the release commit) would succeed."""
    engine = stack.engine(durable=True)
    sync = FailingSync(monkeypatch, code)
    source = pattern(200 * KiB, 4)
    upload = await create(engine, len(source))
    await append(engine, upload.id, 0, source[: 10 * KiB])
    sync.fail(times=1)
    with pytest.raises(UploadError):  # 500 (EIO) or 507 (ENOSPC)
        await append(engine, upload.id, 10 * KiB, source[10 * KiB :])
    assert await offset_of(engine, upload.id) == 10 * KiB
    record = await append(engine, upload.id, 10 * KiB, source[10 * KiB :])
    assert record.complete
    assert await final_bytes(engine, upload.id) == source
