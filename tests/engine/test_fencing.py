"""Fenced appends: a newer request wins at once, a superseded one never changes a committed
byte, and of two requests racing for one offset at most one succeeds."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.engine.support import (
    INTERVAL,
    KiB,
    Stack,
    Stream,
    append,
    append_command,
    create,
    final_bytes,
    is_superseded,
    offset_of,
    pattern,
    start,
)
from tether.protocol.errors import UploadError


@pytest.mark.parametrize("same_node", [False, True], ids=["other-node", "same-node"])
@pytest.mark.parametrize("then", ["more-bytes", "end", "disconnect"])
@pytest.mark.parametrize("ask_first", [False, True], ids=["append", "head-append"])
async def test_takeover_wins_at_once_and_fences_the_hung_request(
    stack: Stack, same_node: bool, then: str, ask_first: bool
) -> None:
    first = stack.engine("n1")
    second = first if same_node else stack.engine("n2")
    source = pattern(300 * KiB)
    upload = await create(first, len(source))
    hang_at = INTERVAL + 36 * KiB  # one periodic commit, then 36 KiB nobody acknowledged
    after = {"more-bytes": b"X" * (len(source) - hang_at), "end": b"", "disconnect": b""}[then]
    hung = Stream(source, hang_at=hang_at, after=after)
    task = await start(append(first, upload.id, 0, hung))
    await asyncio.wait_for(hung.reached.wait(), 5)
    assert await offset_of(first, upload.id) == INTERVAL

    # The client gave up on the hung request and resumes at the committed offset, which
    # it knows from a HEAD or from the last response it got.
    began = time.monotonic()
    if ask_first:
        assert (await second.head(upload.id)).offset == INTERVAL
    record = await asyncio.wait_for(append(second, upload.id, INTERVAL, source[INTERVAL:]), 1.0)
    assert time.monotonic() - began < 0.5
    assert record.complete and record.assembled
    assert not task.done()  # no request object was passed: nothing told it to stop

    if then == "disconnect":
        hung.interrupt(UploadError(400, "client disconnected mid-body"))
    else:
        hung.release()
    with pytest.raises(UploadError) as info:
        await asyncio.wait_for(task, 5)
    assert is_superseded(info.value)

    final = await second.state.get(upload.id)
    assert final is not None and final.offset == len(source)
    assert len(final.segments) >= 2  # a takeover starts a new segment
    assert await final_bytes(second, upload.id) == source
    assert await final_bytes(first, upload.id) == source


async def test_takeover_on_the_same_node_interrupts_the_old_request(stack: Stack) -> None:
    engine = stack.engine("n1")
    source = pattern(200 * KiB, 3)
    upload = await create(engine, len(source))
    hung = Stream(source, hang_at=INTERVAL + 10 * KiB)
    old = await start(engine.append(append_command(upload.id, 0), hung, client="c", request=hung))
    await asyncio.wait_for(hung.reached.wait(), 5)
    new_body = Stream(source[INTERVAL:])
    record = (
        await engine.append(
            append_command(upload.id, INTERVAL), new_body, client="c", request=new_body
        )
    ).record
    assert record.complete
    # The new request's registration woke the old one, which could not commit any more.
    with pytest.raises(UploadError) as info:
        await asyncio.wait_for(old, 1.0)
    assert is_superseded(info.value)
    assert await final_bytes(engine, upload.id) == source


async def test_a_stale_writer_never_changes_committed_bytes(stack: Stack) -> None:
    """The upload is completed by a request that sends no bytes (the deferred length is
    declared), so its one segment is the hung writer's own: assembly must not hand the
    stale writer's open segment over as the final object."""
    first, second = stack.engine("n1"), stack.engine("n2")
    source = pattern(150 * KiB, 5)
    upload = await create(first, None)
    hung = Stream(source, hang_at=INTERVAL + 20 * KiB, after=b"G" * 100 * KiB)
    task = await start(append(first, upload.id, 0, hung))
    await asyncio.wait_for(hung.reached.wait(), 5)
    record = await append(second, upload.id, INTERVAL, b"", length=INTERVAL, content_length=0)
    assert record.complete
    assert [(s.start, s.length) for s in record.segments] == [(0, INTERVAL)]
    hung.release()
    with pytest.raises(UploadError) as info:
        await task
    assert is_superseded(info.value)
    assert await final_bytes(second, upload.id) == source[:INTERVAL]


async def test_a_stale_request_finding_its_segment_gone_is_superseded(stack: Stack) -> None:
    first, second = stack.engine("n1"), stack.engine("n2")
    upload = await create(first, None)
    await append(first, upload.id, 0, pattern(10 * KiB))  # leaves its segment continuable
    late = Stream(b"late bytes", hang_at=0)  # leased, continuing that segment, no byte yet
    task = await start(append(first, upload.id, 10 * KiB, late))
    await asyncio.wait_for(late.reached.wait(), 5)
    # Another node completes the upload by declaring its length: the segment is assembled.
    record = await append(second, upload.id, 10 * KiB, b"", length=10 * KiB, content_length=0)
    assert record.complete
    late.release()
    with pytest.raises(UploadError) as info:
        await task
    assert is_superseded(info.value)


async def test_stale_commits_after_a_newer_lease_fail_even_without_new_bytes(
    stack: Stack,
) -> None:
    first, second = stack.engine("n1"), stack.engine("n2")
    source = pattern(100 * KiB, 6)
    upload = await create(first, len(source))
    hung = Stream(source, hang_at=10 * KiB, after=b"Z" * 90 * KiB)
    task = await start(append(first, upload.id, 0, hung))
    await asyncio.wait_for(hung.reached.wait(), 5)
    # A request that fails its checks still takes (and releases) a lease.
    with pytest.raises(UploadError) as info:
        await append(second, upload.id, 5, b"x")
    assert info.value.status == 409 and info.value.offset == 0
    hung.release()
    with pytest.raises(UploadError) as info:
        await task
    assert is_superseded(info.value)
    assert await offset_of(first, upload.id) == 0
    record = await append(second, upload.id, 0, source)
    assert record.complete
    assert await final_bytes(first, upload.id) == source


@pytest.mark.parametrize("gated", [True, False], ids=["both-leased-first", "free-running"])
async def test_two_appends_at_one_offset_at_most_one_succeeds(stack: Stack, gated: bool) -> None:
    """The later append supersedes the earlier one; but over a real network the earlier one
    may already have committed a prefix, and the later one then fails its offset check
    after superseding it (as in tusd, taking the lease comes first). So: at most one wins,
    and what is committed is always a prefix of exactly one stream."""
    engines = [stack.engine("n1"), stack.engine("n2")]
    n = 3 * INTERVAL + 5 * KiB
    for round_ in range(6):
        upload = await create(engines[0], n)
        data = [b"a" * n, b"b" * n]
        bodies = [
            Stream(data[0], chunk=(3 + round_) * KiB, hang_at=0 if gated else None),
            Stream(data[1], chunk=(7 - round_) * KiB, hang_at=0 if gated else None),
        ]
        order = [0, 1] if round_ % 2 == 0 else [1, 0]
        tasks = {i: await start(append(engines[i], upload.id, 0, bodies[i])) for i in order}
        if gated:
            for body in bodies:
                await asyncio.wait_for(body.reached.wait(), 5)
            for i in order:
                bodies[i].release()
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
        results = dict(zip(tasks, outcomes, strict=True))
        winners = [i for i, r in results.items() if not isinstance(r, BaseException)]
        assert len(winners) <= 1, results
        for result in results.values():
            if isinstance(result, BaseException):
                assert isinstance(result, UploadError) and result.status == 409, result
        if winners:
            assert await final_bytes(engines[0], upload.id) == data[winners[0]]
            continue
        # Nobody won: the superseded one committed a prefix, the other one nothing.
        superseded = [i for i, r in results.items() if is_superseded(r)]
        assert len(superseded) == 1, results
        owner = data[superseded[0]]
        at = await offset_of(engines[0], upload.id)
        assert 0 < at < n, results
        record = await append(engines[0], upload.id, at, owner[at:])
        assert record.complete
        assert await final_bytes(engines[0], upload.id) == owner
