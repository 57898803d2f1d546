"""Concatenation: a final upload joins partial uploads, finished or not, on any node."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.engine.support import (
    KiB,
    Stack,
    append,
    create,
    final_bytes,
    pattern,
)
from tether.protocol.errors import UploadError
from tether.state.base import StateStore, UploadRecord


async def test_concatenation_with_unfinished_partials(stack: Stack) -> None:
    first, second = stack.engine("n1"), stack.engine("n2")
    a_src, b_src, c_src = pattern(150 * KiB, 1), pattern(70 * KiB, 2), pattern(1, 3)
    a = await create(first, len(a_src), partial=True)
    b = await create(first, None, partial=True)  # deferred length
    c = await create(second, len(c_src), partial=True)
    await append(first, a.id, 0, a_src[: 100 * KiB])
    await append(second, c.id, 0, c_src)

    final = await create(second, None, final_of=(a.id, b.id, c.id))
    assert final.length is None and not final.complete
    assert not (await first.head(final.id)).complete
    with pytest.raises(UploadError) as info:
        await first.download(final.id)
    assert info.value.status == 409
    with pytest.raises(UploadError) as info:
        await append(first, final.id, 0, b"x")
    assert info.value.status == 403

    await append(second, a.id, 100 * KiB, a_src[100 * KiB :])
    assert not (await second.head(final.id)).complete
    await append(first, b.id, 0, b_src, length=len(b_src))

    record = await first.head(final.id)
    assert record.complete and record.length == len(a_src) + len(b_src) + len(c_src)
    assert await final_bytes(second, final.id) == a_src + b_src + c_src
    # The partials stay whole.
    assert await final_bytes(first, a.id) == a_src
    assert await final_bytes(first, b.id) == b_src


async def test_concatenation_of_finished_partials_completes_at_once(stack: Stack) -> None:
    engine = stack.engine()
    parts = [pattern(n, n) for n in (10 * KiB, 0, 90 * KiB)]
    ids = []
    for data in parts:
        part = await create(engine, len(data), partial=True)
        if data:
            await append(engine, part.id, 0, data)
        ids.append(part.id)
    final = await create(engine, None, final_of=tuple(ids))
    assert final.complete and final.length == sum(map(len, parts))
    assert await final_bytes(engine, final.id) == b"".join(parts)


async def test_two_nodes_finishing_one_final_upload_at_once(stack: Stack) -> None:
    engines = [stack.engine(f"n{i}") for i in range(3)]
    a_src, b_src = pattern(80 * KiB, 4), pattern(60 * KiB, 5)
    a = await create(engines[0], len(a_src), partial=True)
    b = await create(engines[0], len(b_src), partial=True)
    await append(engines[0], a.id, 0, a_src)
    final = await create(engines[1], None, final_of=(a.id, b.id))
    await append(engines[2], b.id, 0, b_src)
    records = await asyncio.gather(*(e.head(final.id) for e in engines))
    assert all(r.complete for r in records)
    for engine in engines:
        assert await final_bytes(engine, final.id) == a_src + b_src


async def test_a_final_upload_of_a_non_partial_is_refused(stack: Stack) -> None:
    engine = stack.engine()
    plain = await create(engine, 5)
    with pytest.raises(UploadError) as info:
        await create(engine, None, final_of=(plain.id,))
    assert info.value.status == 400
    with pytest.raises(UploadError) as info:
        await create(engine, None, final_of=("unknown",))
    assert info.value.status == 400


class LeaseTakenByADyingNode:
    """A state store on which, right after this node takes the lease of a final upload,
    another node finishing the same final upload takes it too, and then dies before its
    commit (or is just slower)."""

    def __init__(self, inner: StateStore) -> None:
        self.inner = inner
        self.stolen = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def acquire(self, upload_id: str, *, node: str, client: str | None) -> UploadRecord:
        record = await self.inner.acquire(upload_id, node=node, client=client)
        if record.is_final and not self.stolen:
            self.stolen = True
            await self.inner.acquire(upload_id, node="dying-node", client=None)
        return record


async def test_a_final_upload_completes_after_a_finisher_died_holding_its_lease(
    stack: Stack,
) -> None:
    healthy = stack.engine("n1")
    unlucky = stack.engine("n2", state=LeaseTakenByADyingNode(stack.states.open()))
    a_src, b_src = pattern(20 * KiB, 6), pattern(30 * KiB, 7)
    a = await create(healthy, len(a_src), partial=True)
    b = await create(healthy, len(b_src), partial=True)
    await append(healthy, a.id, 0, a_src)
    await append(healthy, b.id, 0, b_src)
    final = await create(unlucky, None, final_of=(a.id, b.id))
    record = await healthy.head(final.id)
    assert record.complete, record
    assert await final_bytes(healthy, final.id) == a_src + b_src
    assert final.complete  # what the creating request answered
