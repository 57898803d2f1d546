"""The byte-store contract, written once and run against every backend.

``ByteStoreContract`` checks the duties of ``tether.storage.base`` through the public
``ByteStore`` methods only; a test module binds it to backends by subclassing it next to a
``byte_stores`` fixture. What only one backend can show (a rename keeps the inode, a full
disk) lives in that backend's own class below the contract.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.contract.backends import Handles
from tether.storage.base import ByteStore, ObjectMissing, Piece

Bytes = Handles[ByteStore]


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` reproducible bytes that no shifted or spliced copy of themselves matches."""
    return random.Random(seed).randbytes(n)


async def write_segment(
    store: ByteStore,
    upload_id: str,
    segment: str,
    data: bytes,
    *,
    start: int = 0,
    chunk: int = 4096,
    durable: bool = False,
) -> None:
    writer = await store.open_segment(upload_id, segment, start)
    try:
        for i in range(0, len(data), chunk):
            await writer.write(data[i : i + chunk])
        await writer.flush(durable)
    finally:
        await writer.close()


async def read_all(store: ByteStore, upload_id: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in store.read(upload_id, start, end)])


async def assert_final(store: ByteStore, upload_id: str, expected: bytes) -> None:
    """The final object holds exactly ``expected``: not a byte less, not a byte more."""
    assert await read_all(store, upload_id, 0, len(expected)) == expected
    with pytest.raises(ObjectMissing):
        await read_all(store, upload_id, 0, len(expected) + 1)


class ByteStoreContract:
    """Subclass in a ``test_*.py`` module where a ``byte_stores`` fixture is visible."""

    # -- segments ------------------------------------------------------------------------

    @pytest.mark.parametrize("durable", [False, True])
    async def test_write_flush_close_assemble(self, byte_stores: Bytes, durable: bool) -> None:
        store = byte_stores.open()
        data = pattern(300_000)
        await write_segment(store, "u", "e1", data, chunk=65_536, durable=durable)
        await store.assemble("u", [Piece("u", "e1", 0, len(data))])
        await assert_final(store, "u", data)

    async def test_reopen_at_committed_length_discards_garbage(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        await write_segment(store, "u", "e1", b"0123456789")
        await write_segment(store, "u", "e1", b"ab", start=4)
        await write_segment(store, "u", "e1", b"", start=6)
        await store.assemble("u", [Piece("u", "e1", 0, 6)])
        await assert_final(store, "u", b"0123ab")

    async def test_reopen_at_zero_discards_everything(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        await write_segment(store, "u", "e1", b"garbage")
        await write_segment(store, "u", "e1", b"ok", start=0)
        await store.assemble("u", [Piece("u", "e1", 0, 2)])
        await assert_final(store, "u", b"ok")

    async def test_reopen_past_the_end_raises(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        await write_segment(store, "u", "e1", b"12345")
        with pytest.raises(ObjectMissing):
            await store.open_segment("u", "e1", 6)
        with pytest.raises(ObjectMissing):
            await store.open_segment("u", "e9", 1)
        with pytest.raises(ObjectMissing):
            await store.open_segment("other", "e1", 1)
        # Nothing was truncated or created by the failed opens.
        await write_segment(store, "u", "e1", b"6", start=5)
        await store.assemble("u", [Piece("u", "e1", 0, 6)])
        await assert_final(store, "u", b"123456")

    async def test_segments_of_one_upload_are_separate(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        await write_segment(store, "u", "e1", b"aaaa")
        await write_segment(store, "u", "e2", b"bb")
        await write_segment(store, "v", "e1", b"cccccc")
        await store.assemble("u", [Piece("u", "e1", 0, 4), Piece("u", "e2", 0, 2)])
        await store.assemble("v", [Piece("v", "e1", 0, 6)])
        await assert_final(store, "u", b"aaaabb")
        await assert_final(store, "v", b"cccccc")

    # -- assembly ------------------------------------------------------------------------

    async def test_assemble_single_piece_with_garbage_past_it(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        await write_segment(store, "u", "e1", b"committed|garbage")
        await store.assemble("u", [Piece("u", "e1", 0, 9)])
        await assert_final(store, "u", b"committed")

    async def test_assemble_ranges_of_several_segments(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        a, b, c = pattern(70_000, 1), pattern(50_000, 2), pattern(1000, 3)
        await write_segment(store, "u", "e2", a)
        await write_segment(store, "u", "e5", b + b"garbage past the committed range")
        await write_segment(store, "u", "e7", c)
        pieces = [
            Piece("u", "e2", 0, 60_000),
            Piece("u", "e5", 0, len(b)),
            Piece("u", "e7", 10, 500),
            Piece("u", "e2", 60_000, 10_000),
        ]
        await store.assemble("u", pieces)
        await assert_final(store, "u", a[:60_000] + b + c[10:510] + a[60_000:])

    async def test_assemble_nothing_makes_an_empty_object(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        await store.assemble("u", [])
        await assert_final(store, "u", b"")

    async def test_assemble_final_objects_of_other_uploads(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        a, b = pattern(100_000, 4), pattern(33_333, 5)
        await write_segment(store, "a", "e1", a)
        await store.assemble("a", [Piece("a", "e1", 0, len(a))])
        await write_segment(store, "b", "e1", b[:10_000])
        await write_segment(store, "b", "e3", b[10_000:])
        await store.assemble("b", [Piece("b", "e1", 0, 10_000), Piece("b", "e3", 0, 23_333)])
        pieces = [Piece("a", None, 0, len(a)), Piece("b", None, 0, len(b)), Piece("a", None, 5, 7)]
        await store.assemble("ab", pieces)
        await assert_final(store, "ab", a + b + a[5:12])
        # The parts stay as they were.
        await assert_final(store, "a", a)
        await assert_final(store, "b", b)

    async def test_assemble_of_a_missing_range_raises(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        await write_segment(store, "u", "e1", b"short")
        with pytest.raises(ObjectMissing):
            await store.assemble("u", [Piece("u", "e1", 0, 6)])
        with pytest.raises(ObjectMissing):
            await store.assemble("u", [Piece("u", "e1", 0, 5), Piece("u", "e2", 0, 1)])
        with pytest.raises(ObjectMissing):
            await store.assemble("w", [Piece("nope", None, 0, 1)])
        # A failed assembly leaves the segments to retry with the right pieces.
        await store.assemble("u", [Piece("u", "e1", 0, 5)])
        await assert_final(store, "u", b"short")

    @pytest.mark.parametrize("segments", [1, 3])
    async def test_assemble_is_idempotent(self, byte_stores: Bytes, segments: int) -> None:
        store = byte_stores.open()
        data = pattern(90_000)
        step = len(data) // segments
        pieces = []
        for i in range(segments):
            part = data[i * step : (i + 1) * step if i < segments - 1 else len(data)]
            await write_segment(store, "u", f"e{i}", part + b"tail garbage")
            pieces.append(Piece("u", f"e{i}", 0, len(part)))
        await store.assemble("u", pieces)
        await store.assemble("u", pieces)
        await assert_final(store, "u", data)
        other = byte_stores.open()  # another node on the same store
        await other.assemble("u", pieces)
        await assert_final(other, "u", data)
        await assert_final(store, "u", data)

    @pytest.mark.parametrize("segments", [1, 2])
    async def test_concurrent_assembly_by_several_nodes(
        self, byte_stores: Bytes, segments: int
    ) -> None:
        nodes = [byte_stores.open() for _ in range(4)]
        for round_ in range(10):
            upload_id = f"u{round_}"
            data = pattern(200_000, round_)
            half = len(data) // segments
            pieces = []
            for i in range(segments):
                part = data[i * half : (i + 1) * half if i < segments - 1 else len(data)]
                await write_segment(nodes[0], upload_id, f"e{i}", part + b"junk")
                pieces.append(Piece(upload_id, f"e{i}", 0, len(part)))
            await asyncio.gather(*(node.assemble(upload_id, pieces) for node in nodes))
            for node in nodes:
                await assert_final(node, upload_id, data)

    async def test_a_stale_writer_never_changes_the_final_object(self, byte_stores: Bytes) -> None:
        """A superseded writer may still hold its segment open when another node assembles
        the upload from that segment's committed range; whatever it writes afterwards must
        not reach the final object."""
        store, other = byte_stores.open(), byte_stores.open()
        stale = await store.open_segment("u", "e1", 0)
        await stale.write(b"committed")
        await stale.flush(False)
        await stale.write(b"+past")  # written, never committed
        await other.assemble("u", [Piece("u", "e1", 0, 9)])
        await stale.write(b"+late")
        await stale.flush(True)
        await stale.close()
        await assert_final(other, "u", b"committed")
        await other.assemble("u", [Piece("u", "e1", 0, 9)])  # still idempotent
        await assert_final(store, "u", b"committed")

    async def test_no_segment_opens_once_assembled(self, byte_stores: Bytes) -> None:
        """Only a stale writer opens a segment of an assembled upload; it must neither
        write into the final object nor leave a segment behind."""
        store = byte_stores.open()
        await write_segment(store, "u", "e1", b"abc")
        await store.assemble("u", [Piece("u", "e1", 0, 3)])
        for segment, start in [("e1", 3), ("e1", 0), ("e9", 0)]:
            with pytest.raises(ObjectMissing):
                await store.open_segment("u", segment, start)
        await assert_final(store, "u", b"abc")

    # -- reading and deleting ------------------------------------------------------------

    async def test_read_ranges(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        data = pattern(700_000)
        await write_segment(store, "u", "e1", data, chunk=100_000)
        await store.assemble("u", [Piece("u", "e1", 0, len(data))])
        for start, end in [(0, 1), (1, 2), (0, 262_144), (262_143, 262_145), (5, 699_999)]:
            assert await read_all(store, "u", start, end) == data[start:end]
        assert await read_all(store, "u", 700_000, 700_000) == b""
        assert await read_all(store, "u", 10, 10) == b""
        with pytest.raises(ObjectMissing):
            await read_all(store, "u", 699_000, 700_001)

    async def test_read_before_assembly_raises(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        with pytest.raises(ObjectMissing):
            await read_all(store, "nope", 0, 1)
        await write_segment(store, "u", "e1", b"data")
        with pytest.raises(ObjectMissing):
            await read_all(store, "u", 0, 1)

    async def test_delete_removes_everything(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        await write_segment(store, "u", "e1", b"abc")
        await store.assemble("u", [Piece("u", "e1", 0, 3)])
        await write_segment(store, "keep", "e1", b"keep")
        await store.delete("u")
        with pytest.raises(ObjectMissing):
            await read_all(store, "u", 0, 1)
        for segment in ("e1", "e2"):
            with pytest.raises(ObjectMissing):
                await store.open_segment("u", segment, 1)
        await store.delete("u")
        await store.delete("never-existed")
        await store.assemble("keep", [Piece("keep", "e1", 0, 4)])
        await assert_final(store, "keep", b"keep")

    async def test_delete_of_an_unassembled_upload(self, byte_stores: Bytes) -> None:
        store = byte_stores.open()
        await write_segment(store, "u", "e1", b"abc")
        await store.delete("u")
        with pytest.raises(ObjectMissing):
            await store.open_segment("u", "e1", 1)
        with pytest.raises(ObjectMissing):
            await store.assemble("u", [Piece("u", "e1", 0, 3)])

    async def test_check(self, byte_stores: Bytes) -> None:
        await byte_stores.open().check()
