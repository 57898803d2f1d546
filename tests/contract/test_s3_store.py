"""What only the S3 store can show: the part arithmetic, completion in place, and the
multipart uploads it leaves behind (none). The shared contract runs in test_byte_stores.py.

Parts here are 5 MiB, the smallest S3 allows, so multi-part uploads stay small."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.contract.byte_contract import assert_final, pattern
from tests.support.rgw import S3Service
from tether.backends import BackendError, open_storage
from tether.storage.base import ObjectMissing, Piece, StorageError
from tether.storage.s3 import (
    MAX_PART,
    WRITER_PARTS,
    Range,
    S3ByteStore,
    _Multipart,
    _S3Writer,
    part_size_for,
    plan_parts,
)

MiB = 1024 * 1024
PART = 5 * MiB


# -- the plan, without a server ------------------------------------------------------------


def _cover(parts: list[Any]) -> list[tuple[str, int, int]]:
    """The bytes the parts copy, in order, with adjacent ranges of one key merged."""
    out: list[tuple[str, int, int]] = []
    for part in parts:
        for r in part.ranges:
            if out and out[-1][0] == r.key and out[-1][1] + out[-1][2] == r.start:
                out[-1] = (r.key, out[-1][1], out[-1][2] + r.length)
            else:
                out.append((r.key, r.start, r.length))
    return out


def test_plan_copies_big_ranges_and_gathers_small_ones() -> None:
    sources = [Range("a", 0, 20 * MiB), Range("b", 0, 1 * MiB), Range("c", 3, 30 * MiB)]
    plan = plan_parts(sources, 8001, 10_000)
    assert [p.number for p in plan] == list(range(8001, 8001 + len(plan)))
    # All but the last part are at least 8 MiB; single-range parts are copies.
    assert all(p.length >= 8 * MiB for p in plan[:-1])
    assert plan[0].ranges == (Range("a", 0, 20 * MiB),)
    assert [r.key for r in plan[1].ranges] == ["b", "c"]
    assert _cover(plan) == [("a", 0, 20 * MiB), ("b", 0, MiB), ("c", 3, 30 * MiB)]


def test_plan_fits_the_part_numbers_it_is_given() -> None:
    # 1 TiB in 2000 slots: parts grow past 8 MiB so that they fit.
    sources = [Range(f"k{i}", 0, 300 * MiB if i % 2 else 7) for i in range(7000)]
    total = sum(s.length for s in sources)
    plan = plan_parts(sources, 8001, 10_000)
    assert plan[-1].number <= 10_000
    assert all(MAX_PART >= p.length >= total / 1999 for p in plan[:-1])
    assert sum(p.length for p in plan) == total


def test_plan_of_a_huge_range_splits_at_the_s3_part_maximum() -> None:
    plan = plan_parts([Range("a", 0, 12 * 1024 * MiB)], 1, 10_000)
    assert [p.length for p in plan] == [MAX_PART, MAX_PART, 2 * 1024 * MiB]


def test_part_size_fits_the_largest_upload() -> None:
    assert part_size_for(None) == 8 * MiB
    assert part_size_for(10 * 1024 * MiB) == 8 * MiB
    tib = 1024 * 1024 * MiB
    size = part_size_for(5 * tib)
    assert size % MiB == 0 and size * WRITER_PARTS >= 5 * tib
    with pytest.raises(StorageError):
        part_size_for(None, 1 * MiB)


def test_url_options() -> None:
    store = open_storage("s3://b/some/prefix?endpoint=http://127.0.0.1:1&part_size=16MiB")
    assert isinstance(store, S3ByteStore)
    assert (store.bucket, store.prefix, store.part_size) == ("b", "some/prefix/", 16 * MiB)
    assert store.commit_interval == 16 * MiB
    assert store.max_upload_size == 16 * MiB * WRITER_PARTS
    # --max-size raises the part size so that the largest upload fits.
    big = open_storage("s3://b?part_size=5MiB", max_size=200 * 1024 * MiB)
    assert isinstance(big, S3ByteStore) and big.part_size * WRITER_PARTS >= 200 * 1024 * MiB
    for bad in ("s3://b?colour=red", "s3://b?part_size=lots", "s3://?endpoint=x"):
        with pytest.raises((StorageError, BackendError)):
            open_storage(bad)


# -- against the server --------------------------------------------------------------------


@pytest.fixture
async def store(s3_gateway: S3Service) -> AsyncIterator[S3ByteStore]:
    opened = open_storage(s3_gateway.url(s3_gateway.new_bucket(), "up") + "&part_size=5MiB")
    assert isinstance(opened, S3ByteStore)
    yield opened
    await opened.close()


@pytest.fixture
def s3(s3_gateway: S3Service) -> Iterator[Any]:
    client = s3_gateway.client()
    yield client
    client.close()


async def _write(
    store: S3ByteStore,
    segment: str,
    data: bytes,
    *,
    start: int = 0,
    origin: int | None = None,
    flush: bool = True,
    chunk: int = 256 * 1024,
) -> _S3Writer:
    writer = await store.open_segment("u", segment, start, origin=origin)
    for i in range(0, len(data), chunk):
        await writer.write(data[i : i + chunk])
    if flush:
        await writer.flush(False)
        await writer.close()
    return writer


def _keys(s3: Any, store: S3ByteStore) -> list[str]:
    listed = s3.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
    return sorted(item["Key"][len(store.prefix) :] for item in listed.get("Contents", []))


def _multiparts(s3: Any, store: S3ByteStore) -> list[str]:
    listed = s3.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    return sorted(u["Key"][len(store.prefix) :] for u in listed.get("Uploads", []))


@pytest.mark.s3
async def test_an_upload_nobody_took_over_completes_in_place(store: S3ByteStore, s3: Any) -> None:
    data = pattern(23 * MiB + 5, 1)
    # Three requests, each ending off the part grid, each continuing the last one's tail.
    cuts = [0, 7 * MiB, 12 * MiB + 512 * 1024, len(data)]
    for a, b in itertools.pairwise(cuts):
        await _write(store, "e1", data[a:b], start=a, origin=0)
    assert "segments/u/e1.tail-20971520" in _keys(s3, store)
    assert _multiparts(s3, store) == ["u"]  # the segment's parts wait at the final key
    await store.assemble("u", [Piece("u", "e1", 0, len(data))])
    await assert_final(store, "u", data)
    # Four whole parts where the writers put them, and the tail as a fifth: no copy.
    assert s3.head_object(Bucket=store.bucket, Key="up/u")["ETag"].strip('"').endswith("-5")
    assert _keys(s3, store) == ["u"]
    assert _multiparts(s3, store) == []


@pytest.mark.s3
async def test_takeovers_join_segments_with_copies(store: S3ByteStore, s3: Any) -> None:
    data = pattern(30 * MiB, 2)
    a, b = 12 * MiB + 3, 25 * MiB
    # e1 starts the upload; its writer is superseded after committing ``a`` bytes, and
    # goes on writing (a part past its commit) while e2 and e3 take over.
    stale = await _write(store, "e1", data[:a], origin=0)
    stale = await store.open_segment("u", "e1", a, origin=0)
    await stale.write(pattern(6 * MiB, 9))
    await _write(store, "e2", data[a:b], origin=a)
    await _write(store, "e3", data[b:], origin=b, chunk=1000_003)
    pieces = [Piece("u", "e1", 0, a), Piece("u", "e2", 0, b - a), Piece("u", "e3", 0, 5 * MiB)]
    await store.assemble("u", pieces)
    await assert_final(store, "u", data)
    with pytest.raises(StorageError):  # too late: its multipart upload is gone
        await stale.write(pattern(6 * MiB, 10))
    with pytest.raises(StorageError):
        await stale.close()
    assert _keys(s3, store) == ["u"]
    assert _multiparts(s3, store) == []


@pytest.mark.s3
async def test_many_small_segments_are_gathered_into_parts(store: S3ByteStore) -> None:
    data = pattern(17 * MiB, 3)
    pieces, at = [], 0
    for i, size in enumerate([MiB, 700_000, 6 * MiB, 1, 2 * MiB, 4 * MiB]):
        await _write(store, f"e{i}", data[at : at + size], origin=at)
        pieces.append(Piece("u", f"e{i}", 0, size))
        at += size
    await _write(store, "e9", data[at:], origin=at)
    pieces.append(Piece("u", "e9", 0, len(data) - at))
    await store.assemble("u", pieces)
    await assert_final(store, "u", data)


@pytest.mark.s3
async def test_concatenation_copies_the_partial_uploads(store: S3ByteStore) -> None:
    a, b = pattern(11 * MiB, 4), pattern(3 * MiB, 5)
    for upload_id, data in (("a", a), ("b", b)):
        writer = await store.open_segment(upload_id, "e1", 0, origin=0)
        await writer.write(data)
        await writer.flush(False)
        await writer.close()
        await store.assemble(upload_id, [Piece(upload_id, "e1", 0, len(data))])
    await store.assemble("ab", [Piece("a", None, 0, len(a)), Piece("b", None, 0, len(b))])
    await assert_final(store, "ab", a + b)


@pytest.mark.s3
async def test_delete_aborts_the_multipart_uploads(store: S3ByteStore, s3: Any) -> None:
    await _write(store, "e1", pattern(6 * MiB, 6), origin=0)
    await _write(store, "e2", pattern(6 * MiB, 7), origin=6 * MiB)
    assert _multiparts(s3, store) == ["segments/u/e2", "u"]
    await store.delete("u")
    assert _multiparts(s3, store) == []
    assert _keys(s3, store) == []


@pytest.mark.s3
async def test_a_failed_part_upload_leaves_the_segment_unsettled(
    store: S3ByteStore, s3: Any
) -> None:
    writer = await _write(store, "e1", pattern(6 * MiB, 8), origin=0, flush=False)
    await store.delete("u")  # its multipart upload is aborted under it
    with pytest.raises(StorageError):
        await writer.write(pattern(5 * MiB, 9))
    with pytest.raises(StorageError):
        await writer.flush(False)
    with pytest.raises(StorageError):
        await writer.close()
    with pytest.raises(ObjectMissing):
        await store.open_segment("u", "e1", 6 * MiB)


@pytest.mark.s3
async def test_a_failed_tail_write_leaves_the_segment_unsettled(
    store: S3ByteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tail PUT whose outcome is unknown may still land over the tail of a writer that
    continues the segment: nobody may continue it."""
    writer = await _write(store, "e1", pattern(3 * MiB, 11), origin=0, flush=False)
    _failing(store, monkeypatch, "put_object")
    with pytest.raises(StorageError):
        await writer.flush(False)
    with pytest.raises(StorageError):
        await writer.close()


@pytest.mark.s3
async def test_a_stale_writer_starts_no_multipart_upload_after_assembly(
    store: S3ByteStore, s3: Any
) -> None:
    stale = await store.open_segment("u", "e1", 0, origin=0)
    await stale.write(pattern(MiB, 12))  # less than a part: nothing uploaded yet
    await _write(store, "e2", pattern(3, 13), origin=0)
    await store.assemble("u", [Piece("u", "e2", 0, 3)])
    with pytest.raises(StorageError):
        await stale.write(pattern(5 * MiB, 14))  # would have started one at the final key
    assert _multiparts(s3, store) == []


async def _one_part_then_stale_ones(
    store: S3ByteStore, seed: int, stale: int
) -> tuple[bytes, list[Piece]]:
    """An upload of 6 MiB whose first segment's writer committed one part, then uploaded
    ``stale`` more before it was superseded; e2 holds the last MiB."""
    data = pattern(6 * MiB, seed)
    await _write(store, "e1", data[:PART], origin=0)
    writer = await store.open_segment("u", "e1", PART, origin=0)
    await writer.write(pattern(stale * PART, seed + 1))
    await _write(store, "e2", data[PART:], origin=PART)
    return data, [Piece("u", "e1", 0, PART), Piece("u", "e2", 0, MiB)]


def _failing(store: S3ByteStore, monkeypatch: pytest.MonkeyPatch, operation: str) -> None:
    """Every ``operation`` of ``store`` fails from now on (the other calls go through)."""
    real = store._call

    async def call(what: str, op: str, **kwargs: object) -> object:
        if op == operation:
            raise StorageError(f"{op} failed after retries")
        return await real(what, op, **kwargs)

    monkeypatch.setattr(store, "_call", call)


@pytest.mark.s3
async def test_stale_parts_too_many_to_overwrite_are_completed_and_copied_around(
    store: S3ByteStore, s3: Any
) -> None:
    """The first segment's writer committed one part, then uploaded three more before it
    was superseded; the 1 MiB after the takeover cannot overwrite three part numbers with
    parts of 5 MiB, and RGW will not complete while they are left out."""
    data, pieces = await _one_part_then_stale_ones(store, 15, 3)
    await store.assemble("u", pieces)
    await assert_final(store, "u", data)
    assert _keys(s3, store) == ["u"]
    assert _multiparts(s3, store) == []


@pytest.mark.s3
async def test_an_assembly_cut_off_after_completing_stale_parts_is_finished_later(
    store: S3ByteStore, s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, pieces = await _one_part_then_stale_ones(store, 17, 2)
    with monkeypatch.context() as patch:
        _failing(store, patch, "create_multipart_upload")  # dies before copying
        with pytest.raises(StorageError):
            await store.assemble("u", pieces)
    # The final key holds the committed part and the stale ones: not the upload's size.
    assert s3.head_object(Bucket=store.bucket, Key="up/u")["ContentLength"] == 3 * PART
    await store.assemble("u", pieces)
    await assert_final(store, "u", data)
    assert _multiparts(s3, store) == []


@pytest.mark.s3
async def test_completing_past_the_commit_never_leaves_the_uploads_length(
    store: S3ByteStore, s3: Any
) -> None:
    """Parts past the commit S3 would refuse become zeros; a last one that would give the
    final object the upload's length is cut, since that length means assembly is done."""
    key = store.final_key("u")
    started = s3.create_multipart_upload(Bucket=store.bucket, Key=key)
    base = _Multipart(key, started["UploadId"], PART)
    etags = {}
    for number, size in ((1, PART), (2, MiB), (3, MiB)):
        uploaded = s3.upload_part(
            Bucket=store.bucket,
            Key=key,
            UploadId=base.upload_id,
            PartNumber=number,
            Body=pattern(size, number),
        )
        etags[number] = uploaded["ETag"]
    total = 2 * PART + MiB  # what parts 1..3 would hold once part 2 is padded to 5 MiB
    extra = [(2, etags[2], MiB), (3, etags[3], MiB)]
    await store._complete_past_commit(base, [(1, etags[1])], extra, total)
    head = s3.head_object(Bucket=store.bucket, Key=key)
    assert head["ContentLength"] == 2 * PART + 1
    first = s3.get_object(Bucket=store.bucket, Key=key, Range=f"bytes=0-{PART - 1}")
    assert first["Body"].read() == pattern(PART, 1)


@pytest.mark.s3
async def test_a_stale_writer_racing_the_assembly_aborts_its_multipart_upload(
    store: S3ByteStore, s3: Any, s3_gateway: S3Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another node assembles the upload, clean-up included, just before the writer's
    multipart upload exists: that clean-up never saw it, so nothing else would abort it."""
    stale = await store.open_segment("u", "e1", 0, origin=0)
    await stale.write(pattern(MiB, 19))
    await _write(store, "e2", pattern(3, 20), origin=0)
    other = open_storage(s3_gateway.url(store.bucket, "up") + "&part_size=5MiB")
    real = store._call

    async def assembled_first(what: str, operation: str, **kwargs: object) -> object:
        if operation == "create_multipart_upload":
            await other.assemble("u", [Piece("u", "e2", 0, 3)])
        return await real(what, operation, **kwargs)

    monkeypatch.setattr(store, "_call", assembled_first)
    try:
        with pytest.raises(ObjectMissing):
            await stale.write(pattern(5 * MiB, 21))
    finally:
        await other.close()
    assert _multiparts(s3, store) == []
    assert _keys(s3, store) == ["u"]


@pytest.mark.s3
@pytest.mark.parametrize("other_finishes", [True, False], ids=["finished", "cut-off"])
async def test_an_assembly_overtaken_by_another_node_goes_on_from_what_it_left(
    store: S3ByteStore,
    s3: Any,
    s3_gateway: S3Service,
    monkeypatch: pytest.MonkeyPatch,
    other_finishes: bool,
) -> None:
    """While this node lists the first segment's parts, another completes it: as the
    upload, or (it died before copying) stale parts and all."""
    data, pieces = await _one_part_then_stale_ones(store, 22, 2)
    other = open_storage(s3_gateway.url(store.bucket, "up") + "&part_size=5MiB")
    assert isinstance(other, S3ByteStore)
    real_list = store._list_parts
    if not other_finishes:
        _failing(other, monkeypatch, "create_multipart_upload")

    async def overtaken(multipart: Any) -> dict[int, tuple[str, int]]:
        monkeypatch.setattr(store, "_list_parts", real_list)
        with contextlib.suppress(StorageError):
            await other.assemble("u", pieces)
        return await real_list(multipart)

    monkeypatch.setattr(store, "_list_parts", overtaken)
    try:
        await store.assemble("u", pieces)
    finally:
        await other.close()
    await assert_final(store, "u", data)
    assert _multiparts(s3, store) == []
    assert _keys(s3, store) == ["u"]


@pytest.mark.s3
async def test_a_stale_writer_drops_the_tail_it_stored_after_the_assembly(
    store: S3ByteStore, s3: Any
) -> None:
    stale = await store.open_segment("u", "e1", 0, origin=0)
    await stale.write(pattern(MiB, 24))
    await stale.abandon()  # not assembled: its tail may be needed, and it has none yet
    await _write(store, "e2", pattern(3, 25), origin=0)
    await store.assemble("u", [Piece("u", "e2", 0, 3)])
    await stale.flush(False)  # lands after the clean-up: nothing would ever remove it
    assert "segments/u/e1.tail-0" in _keys(s3, store)
    await stale.abandon()  # (the engine's call once its commit is refused)
    assert _keys(s3, store) == ["u"]
