"""Segments: a well-behaved upload keeps one segment and completes by a rename; a discarded
chunk or a dropped connection leaves the upload where the next request continues it."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.engine.support import (
    INTERVAL,
    KiB,
    Stack,
    Stream,
    append,
    create,
    create_command,
    final_bytes,
    final_inode,
    offset_of,
    pattern,
    segment_inode,
    sha1,
)
from tether.engine import UploadService
from tether.protocol.errors import UploadError
from tether.storage.base import Piece
from tether.storage.filesystem import FilesystemByteStore


def forbid_copies(monkeypatch: pytest.MonkeyPatch, engine: UploadService) -> None:
    if isinstance(engine.storage, FilesystemByteStore):

        def no_copy(piece: Piece, out_fd: int) -> None:
            raise AssertionError(f"copied {piece}: expected a rename")

        monkeypatch.setattr(engine.storage, "_copy_piece", no_copy)


async def test_well_behaved_patches_keep_one_segment_and_complete_by_rename(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each PATCH lands on another node: continuing a segment needs no stickiness.
    engines = [stack.engine(f"n{i}") for i in range(3)]
    source = pattern(400 * KiB, 1)
    upload = await create(engines[0], len(source))
    cuts = [0, 50 * KiB, 50 * KiB + 3 * INTERVAL + 1, 300 * KiB]
    for i, (begin, end) in enumerate(itertools.pairwise(cuts)):
        record = await append(engines[i % 3], upload.id, begin, source[begin:end])
        assert record.offset == end
        assert len(record.segments) == 1
    inode = segment_inode(engines[0], upload.id, record.segments[0].name)
    for engine in engines:
        forbid_copies(monkeypatch, engine)
    record = await append(engines[2], upload.id, cuts[-1], source[cuts[-1] :])
    assert record.complete and record.assembled
    assert len(record.segments) == 1 and record.segments[0].length == len(source)
    assert final_inode(engines[1], upload.id) == inode
    assert await final_bytes(engines[1], upload.id) == source


async def test_creation_with_upload_continues_its_segment(stack: Stack) -> None:
    engine = stack.engine()
    source = pattern(150 * KiB, 2)
    outcome = await engine.create(
        create_command(len(source), body=100 * KiB), Stream(source[: 100 * KiB]), client="c"
    )
    assert outcome.record.offset == 100 * KiB
    record = await append(engine, outcome.record.id, 100 * KiB, source[100 * KiB :])
    assert record.complete
    assert [s.name.split("-")[0] for s in record.segments] == ["e1"]
    assert await final_bytes(engine, record.id) == source


async def test_after_a_takeover_there_are_several_segments(stack: Stack) -> None:
    first, second = stack.engine("n1"), stack.engine("n2")
    source = pattern(250 * KiB, 3)
    upload = await create(first, len(source))
    await append(first, upload.id, 0, source[: 20 * KiB])  # clean: e2 stays continuable
    hung = Stream(source[20 * KiB :], hang_at=INTERVAL + 1, after=b"")
    task = asyncio.ensure_future(append(first, upload.id, 20 * KiB, hung))
    await asyncio.wait_for(hung.reached.wait(), 5)
    at = await offset_of(first, upload.id)
    # Commits fall where the segment (continued at 20 KiB) crosses a multiple of INTERVAL.
    assert at == INTERVAL
    await append(second, upload.id, at, source[at : at + 10 * KiB])
    record = await append(first, upload.id, at + 10 * KiB, source[at + 10 * KiB :])
    hung.release()
    with pytest.raises(UploadError):
        await task
    # e2 (continued by the hung request), then the new lease's segment, continued once more.
    assert [s.name.split("-")[0] for s in record.segments] == ["e2", "e4"]
    assert [s.length for s in record.segments] == [at, len(source) - at]
    assert await final_bytes(second, upload.id) == source


@pytest.mark.parametrize("where", ["new-segment", "continued-segment"])
async def test_checksum_mismatch_discards_the_chunk_and_the_next_patch_continues(
    stack: Stack, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = stack.engine()
    source = pattern(300 * KiB, 4)
    upload = await create(engine, len(source))
    at = 0
    if where == "continued-segment":
        at = 10 * KiB
        await append(engine, upload.id, 0, source[:at])
    chunk = source[at : at + 2 * INTERVAL + 7]  # longer than the commit interval
    with pytest.raises(UploadError) as info:
        await append(engine, upload.id, at, chunk, checksum=sha1(chunk + b"?"))
    assert info.value.status == 460
    record = await engine.head(upload.id)
    assert record.offset == at
    end = at + len(chunk)
    record = await append(engine, upload.id, at, chunk, checksum=sha1(chunk))
    assert record.offset == end
    forbid_copies(monkeypatch, engine)
    record = await append(engine, upload.id, end, source[end:])
    assert record.complete and len(record.segments) == 1
    assert await final_bytes(engine, upload.id) == source


async def test_a_checksum_with_a_dropped_connection_keeps_nothing(stack: Stack) -> None:
    engine = stack.engine()
    source = pattern(200 * KiB, 5)
    upload = await create(engine, len(source))
    body = Stream(source, fail_at=150 * KiB)
    with pytest.raises(UploadError):
        await append(engine, upload.id, 0, body, checksum=sha1(source))
    assert await offset_of(engine, upload.id) == 0  # an unverifiable chunk is not kept
    record = await append(engine, upload.id, 0, source, checksum=sha1(source))
    assert record.complete
    assert await final_bytes(engine, upload.id) == source


@pytest.mark.parametrize("cut", [1, 4 * KiB, INTERVAL - 1, INTERVAL, INTERVAL + 4 * KiB + 17])
async def test_interrupted_body_commits_what_was_received_and_resumes(
    stack: Stack, cut: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, other = stack.engine("n1"), stack.engine("n2")
    source = pattern(200 * KiB, 6)
    upload = await create(engine, len(source))
    body = Stream(source, chunk=3 * KiB, fail_at=cut)
    with pytest.raises(UploadError) as info:
        await append(engine, upload.id, 0, body)
    assert info.value.status == 400
    record = await other.head(upload.id)
    assert record.offset == body.sent == cut  # everything written, nothing more
    forbid_copies(monkeypatch, other)
    record = await append(other, upload.id, record.offset, source[record.offset :])
    assert record.complete
    assert len(record.segments) == 1  # a dropped connection still releases cleanly
    assert await final_bytes(other, upload.id) == source


async def test_a_body_past_the_length_keeps_the_chunks_that_fit(stack: Stack) -> None:
    engine = stack.engine()
    source = pattern(100 * KiB, 7)
    upload = await create(engine, len(source))
    with pytest.raises(UploadError) as info:
        await append(engine, upload.id, 0, Stream(source + b"extra", chunk=30 * KiB))
    assert info.value.status == 413
    assert await offset_of(engine, upload.id) == 90 * KiB
    record = await append(engine, upload.id, 90 * KiB, source[90 * KiB :])
    assert record.complete
    assert await final_bytes(engine, upload.id) == source


async def test_deferred_length_declared_at_the_end(stack: Stack) -> None:
    engine = stack.engine()
    source = pattern(130 * KiB, 8)
    upload = await create(engine, None)
    record = await append(engine, upload.id, 0, source[:INTERVAL])
    assert record.length is None and not record.complete
    record = await append(engine, upload.id, INTERVAL, source[INTERVAL:], length=len(source))
    assert record.complete and len(record.segments) == 1
    assert await final_bytes(engine, upload.id) == source


async def test_empty_upload(stack: Stack) -> None:
    engine = stack.engine()
    upload = await create(engine, 0)
    assert upload.complete
    assert await final_bytes(engine, upload.id) == b""
