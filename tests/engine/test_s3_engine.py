"""The engine on the S3 store (a real Ceph RGW): takeovers across nodes, concatenation,
and expiry and termination leaving nothing in the bucket, multipart uploads included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.contract.backends import S3_BYTES, SQLITE_STATE, Handles
from tests.engine.support import (
    Stack,
    Stream,
    append,
    create,
    final_bytes,
    is_superseded,
    offset_of,
    pattern,
)
from tests.support.rgw import S3Service
from tether.protocol.errors import UploadError
from tether.storage.s3 import S3ByteStore

pytestmark = pytest.mark.s3

MiB = 1024 * 1024
AFTER = 100.0


@pytest.fixture
async def s3_stack(s3_gateway: S3Service, tmp_path: Path) -> AsyncIterator[Stack]:
    url = s3_gateway.url(s3_gateway.new_bucket(), "up") + "&part_size=5MiB"
    stack = Stack(Handles(SQLITE_STATE, SQLITE_STATE.url(tmp_path)), Handles(S3_BYTES, url))
    yield stack
    await stack.aclose()


@pytest.fixture
def s3(s3_gateway: S3Service) -> Iterator[Any]:
    client = s3_gateway.client()
    yield client
    client.close()


def leftovers(s3: Any, store: Any) -> list[str]:
    assert isinstance(store, S3ByteStore)
    objects = s3.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix).get("Contents", [])
    uploads = s3.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return sorted(o["Key"] for o in objects) + sorted(f"mpu:{u['Key']}" for u in uploads)


async def test_takeover_across_nodes(s3_stack: Stack, s3: Any) -> None:
    first, second = s3_stack.engine("n1"), s3_stack.engine("n2")
    source = pattern(23 * MiB, 1)
    upload = await create(first, len(source))
    # A request that stalls past its first part boundary, taken over from another node.
    hung = Stream(source, chunk=256 * 1024, hang_at=7 * MiB, after=pattern(6 * MiB, 2))
    task = asyncio.ensure_future(append(first, upload.id, 0, hung))
    await asyncio.wait_for(hung.reached.wait(), 10)
    at = await offset_of(second, upload.id)
    assert at == 5 * MiB  # committed at the part boundary
    await append(second, upload.id, at, source[at : 12 * MiB + 3])
    hung.release()  # the stale request now writes a part past its commit, then fails
    with pytest.raises(UploadError) as info:
        await task
    assert is_superseded(info.value)
    record = await append(first, upload.id, 12 * MiB + 3, source[12 * MiB + 3 :])
    assert record.complete
    assert await final_bytes(second, upload.id) == source
    assert leftovers(s3, second.storage) == [f"{second.storage.prefix}{upload.id}"]


async def test_concatenation(s3_stack: Stack) -> None:
    engine = s3_stack.engine()
    a, b = pattern(6 * MiB, 3), pattern(MiB + 1, 4)
    parts = []
    for data in (a, b):
        partial = await create(engine, len(data), partial=True)
        await append(engine, partial.id, 0, data)
        parts.append(partial.id)
    final = await create(engine, None, final_of=tuple(parts))
    assert await final_bytes(engine, final.id) == a + b


async def test_expiry_and_termination_leave_nothing(s3_stack: Stack, s3: Any) -> None:
    first = s3_stack.engine("n1", expire_after=AFTER)
    second = s3_stack.engine("n2", expire_after=AFTER)
    expired = await create(first, 20 * MiB)
    await append(first, expired.id, 0, pattern(7 * MiB, 5))  # a part and a tail
    terminated = await create(second, 20 * MiB)
    await append(second, terminated.id, 0, pattern(6 * MiB, 6))
    await append(first, terminated.id, 6 * MiB, pattern(5 * MiB + 1, 7))  # a second segment
    kept = await create(first, 3)
    await append(first, kept.id, 0, b"abc")
    assert len(leftovers(s3, first.storage)) > 4
    await second.terminate(terminated.id)
    s3_stack.clock.now += AFTER + 1
    counts = await asyncio.gather(first.reap_expired(), second.reap_expired())
    assert sum(counts) == 1
    assert leftovers(s3, first.storage) == [f"{first.storage.prefix}{kept.id}"]
