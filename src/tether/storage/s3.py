"""Byte store on an S3-compatible object store (AWS S3, Ceph RGW, ...), via aiobotocore.

URL: ``s3://BUCKET/PREFIX?endpoint=URL&region=NAME&part_size=8MiB&addressing=path|virtual``;
credentials come from botocore's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, instance roles).

Keys, for upload ``ID`` under ``PREFIX``:

- ``PREFIX/ID`` -- the final object.
- ``PREFIX/segments/ID/NAME.mpu`` -- segment NAME's multipart upload: key, id, part size.
- ``PREFIX/segments/ID/NAME.tail-START`` -- bytes of segment NAME from position START that do not
  yet fill a part (S3 refuses parts under 5 MiB but the last), kept in the object store so
  that any node can continue the segment or assemble the upload.
- ``PREFIX/segments/ID/NAME`` -- where the multipart upload of a segment that does not start the
  upload lives, and its object once completed for assembly.

A segment is a grid of parts of ``part_size`` bytes: part k holds positions
``[(k-1)*size, k*size)``, numbered 1..``WRITER_PARTS``; whatever lies past the last whole
part is in a tail object. A writer uploads a part when its buffer fills one; the engine
commits at part boundaries (``commit_interval``), so a mid-stream flush has no tail to store.
A writer only ever writes forward, and a continuing writer takes over a segment only after
the previous one closed (the engine's rule), so a committed part is never rewritten.

The segment that starts an upload (``origin == 0``) has its multipart upload at the final
key: an upload nobody took over completes with CompleteMultipartUpload on the parts it
already has, plus its tail as one last part, and no byte is copied. After takeovers, the
other segments are completed into objects of their own and joined on after the first
segment's whole parts by UploadPartCopy; pieces too small to be parts are downloaded and
uploaded together. A superseded writer may have uploaded parts past its commit: assembly
overwrites them (RGW refuses to complete while any uploaded part is left out), and a part
replaced after it was listed changes its ETag, so completion is refused and tried again.
When the rest of the upload is too short to overwrite them with parts of 5 MiB, the first
segment is completed as it stands, stale parts and all, and its committed parts are copied
out of that object into a new multipart upload at the same key.
The final object existing with the upload's length is the only sign that assembly is
done, so any number of nodes may assemble at once and a node may die anywhere in between.
A superseded writer may store a tail, or start a multipart upload, after the assembly's
clean-up: it removes both itself (``abandon``, once its commit is refused; the check
after starting one), and a bucket lifecycle rule catches what a dying node leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from tether.storage.base import ObjectMissing, Piece, StorageError

log = logging.getLogger("tether.storage.s3")

MiB = 1024 * 1024
GiB = 1024 * MiB
MIN_PART = 5 * MiB  # S3: every part but the last
MAX_PART = 5 * GiB  # S3: any part, copied or uploaded
MAX_PARTS = 10_000  # S3: part numbers 1..10,000
MAX_OBJECT = 5 * 1024 * GiB  # S3: 5 TiB
WRITER_PARTS = 8_000  # writers stop here, leaving part numbers for assembly
DEFAULT_PART_SIZE = 8 * MiB
_ASSEMBLY_CONCURRENCY = 4
_RETRIES = 5
_READ_CHUNK = 256 * 1024

T = TypeVar("T")


def part_size_for(max_size: int | None, configured: int | None = None) -> int:
    """The part size: the configured one (or 8 MiB), raised to a whole MiB so that an
    upload of ``max_size`` fits in ``WRITER_PARTS`` parts."""
    size = configured or DEFAULT_PART_SIZE
    if max_size is not None:
        size = max(size, math.ceil(max_size / WRITER_PARTS / MiB) * MiB)
    if size < MIN_PART or size > MAX_PART:
        raise StorageError(f"S3 part size must be between 5 MiB and 5 GiB, not {size}")
    return size


# -- errors --------------------------------------------------------------------------------


def _code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = error.get("Code")
        if code is not None:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status is not None:
            return str(status)
    return None


def _missing(exc: BaseException) -> bool:
    # RGW answers NoSuchKey where AWS says NoSuchUpload (ListParts on a completed upload).
    # InvalidRange: the object ends before the range asked for.
    return _code(exc) in {"NoSuchKey", "NoSuchUpload", "404", "NotFound", "InvalidRange"}


class TooFewBytes(StorageError):
    """The bytes to assemble cannot fill the part numbers a superseded writer used with
    parts of at least 5 MiB."""


class PartsChanged(StorageError):
    """CompleteMultipartUpload refused the part list: a part was uploaded or replaced since
    it was listed (a stale writer, or another node assembling). RGW also refuses a list
    that leaves out any uploaded part, where AWS ignores the parts left out."""


def _failure(exc: BaseException, what: str) -> StorageError:
    if _code(exc) in {"InvalidPart", "InvalidPartOrder"}:
        return PartsChanged(f"{what}: {exc}")
    if _missing(exc):
        return ObjectMissing(f"{what}: {exc}")
    if _code(exc) in {"EntityTooLarge", "QuotaExceeded"}:
        from tether.storage.base import StorageFull

        return StorageFull(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


# -- the plan of an assembly ---------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Bytes ``[start, start + length)`` of object ``key``."""

    key: str
    start: int
    length: int


@dataclass(frozen=True)
class PlannedPart:
    """One part of the final object: copied from one range, or (several small ranges)
    downloaded and uploaded."""

    number: int
    ranges: tuple[Range, ...]

    @property
    def length(self) -> int:
        return sum(r.length for r in self.ranges)


def plan_parts(
    sources: Sequence[Range], first_number: int, last_number: int, *, at_least: int = 0
) -> list[PlannedPart]:
    """Cut ``sources`` (in order) into parts numbered from ``first_number``.

    Every part but the last has at least ``target`` bytes, the smallest size (8 MiB at
    least) that fits the parts below ``last_number``: a range that long is copied, in parts
    of up to 5 GiB; smaller ranges are gathered until they fill a part. With ``at_least``,
    the parts are cut to one size small enough to make that many parts (the part numbers
    to overwrite), or ``StorageError`` if that would take parts under 5 MiB."""
    total = sum(s.length for s in sources)
    slots = last_number - first_number + 1
    target = max(DEFAULT_PART_SIZE, math.ceil(total / max(1, slots - 1)))
    if target > MAX_PART:
        raise StorageError(f"{total} bytes do not fit in {slots} parts")
    parts = _cut(sources, first_number, target, MAX_PART)
    if len(parts) < at_least:
        size = total // at_least
        if size < MIN_PART:
            raise TooFewBytes(f"{total} bytes cannot fill {at_least} parts of 5 MiB")
        parts = _cut(sources, first_number, size, size)
    if parts and parts[-1].number > last_number:
        raise StorageError(f"{total} bytes need more than {slots} parts")
    return parts


def _cut(sources: Sequence[Range], first_number: int, target: int, most: int) -> list[PlannedPart]:
    parts: list[PlannedPart] = []
    gathered: list[Range] = []
    size = 0

    def emit(ranges: tuple[Range, ...]) -> None:
        parts.append(PlannedPart(first_number + len(parts), ranges))

    for source in sources:
        start, end = source.start, source.start + source.length
        while start < end:
            if size == 0 and end - start >= target:
                n = min(end - start, most)
                emit((Range(source.key, start, n),))
                start += n
                continue
            take = min(target - size, end - start)
            gathered.append(Range(source.key, start, take))
            size += take
            start += take
            if size >= target:
                emit(tuple(gathered))
                gathered, size = [], 0
    if gathered:
        emit(tuple(gathered))
    return parts


# -- the store -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Multipart:
    key: str
    upload_id: str
    part_size: int


class S3ByteStore:
    max_upload_size: int | None

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint: str | None = None,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        addressing: str | None = None,
    ) -> None:
        if not bucket:
            raise StorageError("an s3:// URL needs a bucket: s3://BUCKET/PREFIX")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint = endpoint
        self.region = region
        self.part_size = part_size
        self.commit_interval = part_size
        self.max_upload_size = min(MAX_OBJECT, part_size * WRITER_PARTS)
        self.addressing = addressing or ("path" if endpoint else "auto")
        self._client: Any = None
        self._exit: contextlib.AsyncExitStack | None = None
        self._opening: asyncio.Lock | None = None

    def __repr__(self) -> str:
        where = f" at {self.endpoint}" if self.endpoint else ""
        return f"S3ByteStore(s3://{self.bucket}/{self.prefix}{where})"

    # -- keys and the client ---------------------------------------------------------

    def final_key(self, upload_id: str) -> str:
        return f"{self.prefix}{upload_id}"

    def _area(self, upload_id: str) -> str:
        # Apart from the final objects, so one lifecycle rule on PREFIX/segments/ can clear
        # what superseded writers leave behind (ids are hex: none is "segments").
        return f"{self.prefix}segments/{upload_id}/"

    def _segment_key(self, upload_id: str, segment: str) -> str:
        return f"{self._area(upload_id)}{segment}"

    def _record_key(self, upload_id: str, segment: str) -> str:
        return f"{self._area(upload_id)}{segment}.mpu"

    def _tail_key(self, upload_id: str, segment: str, start: int) -> str:
        return f"{self._area(upload_id)}{segment}.tail-{start}"

    async def client(self) -> Any:
        if self._client is not None:
            return self._client
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._client is None:
                from aiobotocore.config import AioConfig
                from aiobotocore.session import get_session

                config = AioConfig(
                    s3={"addressing_style": self.addressing},
                    # Newer botocore adds CRC trailers that many S3-compatible servers
                    # (Ceph RGW among them) reject; checksums are asked for where needed.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    retries={"mode": "standard", "max_attempts": 4},
                    connect_timeout=5,
                    read_timeout=60,
                    max_pool_connections=64,
                )
                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client(
                        "s3", endpoint_url=self.endpoint, region_name=self.region, config=config
                    )
                )
                self._exit = stack
        return self._client

    async def _call(self, what: str, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        client = await self.client()
        try:
            return await getattr(client, operation)(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise _failure(exc, what) from exc

    # -- objects ---------------------------------------------------------------------

    async def _get(self, key: str, start: int, length: int) -> bytes:
        if length == 0:
            return b""
        response = await self._call(
            f"read {key}", "get_object", Key=key, Range=f"bytes={start}-{start + length - 1}"
        )
        async with _body(response, key) as stream:
            data: bytes = await stream.read()
        if len(data) != length:
            raise ObjectMissing(f"{key} ends before byte {start + length}")
        return data

    async def _size(self, key: str) -> int | None:
        try:
            head = await self._call(f"head {key}", "head_object", Key=key)
        except ObjectMissing:
            return None
        return int(head["ContentLength"])

    async def _read_multipart(self, upload_id: str, segment: str) -> _Multipart | None:
        key = self._record_key(upload_id, segment)
        try:
            response = await self._call(f"read {key}", "get_object", Key=key)
        except ObjectMissing:
            return None
        async with _body(response, key) as stream:
            record = json.loads(await stream.read())
        return _Multipart(str(record["key"]), str(record["upload_id"]), int(record["part_size"]))

    async def _start_multipart(
        self, upload_id: str, segment: str, key: str, part_size: int
    ) -> _Multipart:
        """Start (and record) a segment's multipart upload; ``ObjectMissing`` if the upload
        is assembled by then. The check follows the start: the assembly's clean-up lists
        the multipart uploads after the final object exists, so either it finds this one
        and aborts it, or the check finds the final object and this aborts it."""
        created = await self._call(f"start {key}", "create_multipart_upload", Key=key)
        multipart = _Multipart(key, str(created["UploadId"]), part_size)
        record = {"key": key, "upload_id": multipart.upload_id, "part_size": part_size}
        record_key = self._record_key(upload_id, segment)
        await self._call(
            f"record {segment}", "put_object", Key=record_key, Body=json.dumps(record).encode()
        )
        assembled = False
        with contextlib.suppress(StorageError):  # (a lifecycle rule, then)
            assembled = await self._size(self.final_key(upload_id)) is not None
        if assembled:
            # A writer superseded before its first part, after another node assembled the
            # upload: nothing would ever abort this multipart upload.
            await self._abort(multipart)
            await self._drop(record_key)
            raise ObjectMissing(f"{upload_id} is assembled")
        return multipart

    async def _drop(self, key: str) -> None:
        """Delete one object, as far as one can: what fails is for the bucket's lifecycle
        rule (README)."""
        with contextlib.suppress(StorageError):
            await self._call(f"drop {key}", "delete_object", Key=key)

    async def _abort(self, multipart: _Multipart) -> None:
        """Abort a multipart upload, as far as one can: what fails is for the bucket's
        lifecycle rule (README)."""
        with contextlib.suppress(StorageError):
            await self._call(
                f"abort {multipart.key}",
                "abort_multipart_upload",
                Key=multipart.key,
                UploadId=multipart.upload_id,
            )

    async def _list_parts(self, multipart: _Multipart) -> dict[int, tuple[str, int]]:
        """Part number -> (ETag, size) of an unfinished multipart upload."""
        parts: dict[int, tuple[str, int]] = {}
        marker = 0
        while True:
            page = await self._call(
                f"list parts of {multipart.key}",
                "list_parts",
                Key=multipart.key,
                UploadId=multipart.upload_id,
                PartNumberMarker=marker,
                MaxParts=1000,
            )
            for part in page.get("Parts", []):
                parts[int(part["PartNumber"])] = (str(part["ETag"]), int(part["Size"]))
            if not page.get("IsTruncated"):
                return parts
            marker = int(page["NextPartNumberMarker"])

    async def _complete(self, multipart: _Multipart, etags: Sequence[tuple[int, str]]) -> None:
        await self._call(
            f"complete {multipart.key}",
            "complete_multipart_upload",
            Key=multipart.key,
            UploadId=multipart.upload_id,
            MultipartUpload={
                "Parts": [{"PartNumber": n, "ETag": _quoted(etag)} for n, etag in etags]
            },
        )

    # -- the ByteStore protocol ------------------------------------------------------

    async def open_segment(
        self, upload_id: str, segment: str, start: int, *, origin: int | None = None
    ) -> _S3Writer:
        multipart = None
        buffer = bytearray()
        buffer_start = 0
        final = self.final_key(upload_id)
        if start > 0:
            size, multipart = await asyncio.gather(
                self._size(final), self._read_multipart(upload_id, segment)
            )
        else:
            size = await self._size(final)
        if size is not None:
            # Only a stale writer opens a segment of an assembled upload; what it stored
            # would outlive the clean-up that assembly did.
            raise ObjectMissing(f"{upload_id} is assembled; segment {segment} is not needed")
        if start > 0:
            if multipart is not None:
                buffer_start = start // multipart.part_size * multipart.part_size
            if start > buffer_start:
                key = self._tail_key(upload_id, segment, buffer_start)
                buffer += await self._get(key, 0, start - buffer_start)
        return _S3Writer(
            self,
            upload_id,
            segment,
            # The segment that starts the upload becomes the final object in place.
            final if origin == 0 else self._segment_key(upload_id, segment),
            multipart,
            buffer,
            buffer_start,
        )

    async def assemble(self, upload_id: str, pieces: Sequence[Piece]) -> None:
        final = self.final_key(upload_id)
        total = sum(p.length for p in pieces)
        existing = await self._size(final)
        if existing == total:
            await self._drop_segments(upload_id)
            return
        try:
            await self._assemble(upload_id, list(pieces), total, existing)
        except StorageError:
            # Another node may have finished first, and dropped what this one was reading.
            if await self._size(final) == total:
                return
            raise
        size = await self._size(final)
        if size != total:
            raise StorageError(f"assembled {final} has {size} bytes, not {total}")
        await self._drop_segments(upload_id)

    async def _assemble(
        self, upload_id: str, pieces: list[Piece], total: int, existing: int | None
    ) -> None:
        """``existing``: the size of the object at the final key, if there is one (and it
        is not the upload: see ``_complete_past_commit``)."""
        final = self.final_key(upload_id)
        if total == 0:
            await self._call(f"write {final}", "put_object", Key=final, Body=b"")
            return
        base: _Multipart | None = None  # the first segment's parts, at the final key
        kept = 0  # how many of them stay where they are
        sources: list[Range] = []
        for index, piece in enumerate(pieces):
            if piece.segment is None:
                sources.append(Range(self.final_key(piece.upload_id), piece.start, piece.length))
                continue
            multipart = await self._read_multipart(piece.upload_id, piece.segment)
            end = piece.start + piece.length
            whole = 0  # bytes of the segment held in whole parts
            if multipart is not None:
                whole = end // multipart.part_size * multipart.part_size
            if whole > piece.start:
                assert multipart is not None
                count = whole // multipart.part_size
                if multipart.key == final:
                    if index != 0 or piece.start != 0:
                        raise StorageError(f"segment {piece.segment} is misplaced at {final}")
                    if existing is None:
                        base, kept = multipart, count
                    elif existing >= whole:
                        # An earlier assembly completed the segment's parts in place,
                        # a superseded writer's after them (_complete_past_commit).
                        sources.append(Range(final, 0, whole))
                    else:
                        raise StorageError(f"{final} has {existing} bytes, not {whole} or more")
                else:
                    await self._complete_segment(multipart, count)
                    sources.append(Range(multipart.key, piece.start, whole - piece.start))
            if end > max(whole, piece.start):
                tail_from = max(whole, piece.start)
                sources.append(
                    Range(
                        self._tail_key(piece.upload_id, piece.segment, whole),
                        tail_from - whole,
                        end - tail_from,
                    )
                )
        if base is not None:
            if await self._complete_in_place(base, kept, sources, total):
                return
            if await self._size(final) == total:
                return  # another node finished the upload meanwhile
            # Now an object at the final key, holding the committed parts and more after
            # them: copied from like any other segment, into a new multipart upload there.
            sources.insert(0, Range(final, 0, kept * base.part_size))
        plan = plan_parts(sources, 1, MAX_PARTS)
        created = await self._call(f"start {final}", "create_multipart_upload", Key=final)
        own = _Multipart(final, str(created["UploadId"]), 0)
        try:
            added = await _gather_limited(
                [self._make_part(own, part) for part in plan], _ASSEMBLY_CONCURRENCY
            )
            await self._complete(own, added)
        except BaseException:
            await self._abort(own)
            raise

    async def _whole_parts(
        self, multipart: _Multipart, count: int
    ) -> tuple[list[tuple[int, str]], list[tuple[int, str, int]]]:
        """The ETags of parts 1..count, each a whole part (else ``ObjectMissing``), and the
        ETags and sizes of the parts after them (a superseded writer's, a discarded
        chunk's, or an earlier assembly's)."""
        listed = await self._list_parts(multipart)
        parts = []
        for number in range(1, count + 1):
            found = listed.get(number)
            if found is None or found[1] != multipart.part_size:
                raise ObjectMissing(f"part {number} of {multipart.key} is missing or torn")
            parts.append((number, found[0]))
        extra = sorted((n, etag, size) for n, (etag, size) in listed.items() if n > count)
        return parts, extra

    async def _complete_in_place(
        self, base: _Multipart, count: int, sources: list[Range], total: int
    ) -> bool:
        """Complete the first segment's multipart upload as the final object: its first
        ``count`` parts stay, the rest of the upload is added as parts after them. Parts
        past ``count`` that a superseded writer uploaded are overwritten, since RGW will
        not complete while any uploaded part is left out; if one is replaced meanwhile,
        its ETag no longer matches and completion is refused and tried again.

        False when the rest of the upload is too short to overwrite them with parts of
        5 MiB: the multipart upload is then completed as it is (``_complete_past_commit``)
        for the caller to copy the committed parts from."""
        for _ in range(_RETRIES):
            try:
                kept, extra = await self._whole_parts(base, count)
            except ObjectMissing:
                # Completed by another node meanwhile: as the upload, or stale parts and
                # all (_complete_past_commit). Either starts with the parts kept here.
                size = await self._size(base.key)
                if size is not None and size >= count * base.part_size:
                    return False
                raise
            overwrite = extra[-1][0] - count if extra else 0
            try:
                plan = plan_parts(sources, count + 1, MAX_PARTS, at_least=overwrite)
            except TooFewBytes:
                await self._complete_past_commit(base, kept, extra, total)
                return False
            added = await _gather_limited(
                [self._make_part(base, part) for part in plan], _ASSEMBLY_CONCURRENCY
            )
            try:
                await self._complete(base, kept + added)
                return True
            except PartsChanged as exc:
                log.info("retrying assembly of %s: %s", base.key, exc)
        raise StorageError(f"the parts of {base.key} kept changing; assembly gave up")

    async def _complete_past_commit(
        self,
        base: _Multipart,
        kept: list[tuple[int, str]],
        extra: list[tuple[int, str, int]],
        total: int,
    ) -> None:
        """Complete the first segment's multipart upload with every part it has, those past
        the committed ``kept`` included (RGW insists on all of them), so that the
        committed parts become copyable. The object this leaves at the final key must be
        valid for S3 and must not have the upload's length, which would mark the assembly
        done (``assemble``): parts past the committed ones hold nothing anybody reads, so
        those S3 would refuse (under 5 MiB, not last) become 5 MiB of zeros, and the last
        one a byte or two if the length came out as the upload's."""
        size = base.part_size
        for _ in range(_RETRIES):
            padded: list[tuple[int, str]] = []
            length = len(kept) * size
            for index, (number, etag, part) in enumerate(extra):
                last = index == len(extra) - 1
                if not last and part < MIN_PART:
                    etag, part = await self._put_part(base, number, bytes(MIN_PART)), MIN_PART
                elif last and length + part == total:
                    part = 2 if part == 1 else 1
                    etag = await self._put_part(base, number, bytes(part))
                padded.append((number, etag))
                length += part
            try:
                await self._complete(base, kept + padded)
                return
            except PartsChanged as exc:
                log.info("retrying completion of %s: %s", base.key, exc)
            except ObjectMissing:
                if await self._size(base.key) is not None:
                    return  # completed by another node meanwhile
                raise
            kept, extra = await self._whole_parts(base, len(kept))
        raise StorageError(f"the parts of {base.key} kept changing; assembly gave up")

    async def _put_part(self, target: _Multipart, number: int, data: bytes) -> str:
        uploaded = await self._call(
            f"upload part {number} of {target.key}",
            "upload_part",
            Key=target.key,
            UploadId=target.upload_id,
            PartNumber=number,
            Body=data,
        )
        return str(uploaded["ETag"])

    async def _complete_segment(self, multipart: _Multipart, count: int) -> None:
        """Make a segment an object to copy from, holding at least its first ``count``
        parts. Every part uploaded is in it (RGW insists), so it may go on past the
        committed bytes; only committed ranges are ever copied from it."""
        need = count * multipart.part_size
        for _ in range(_RETRIES):
            size = await self._size(multipart.key)
            if size is not None and size >= need:
                return
            try:
                kept, extra = await self._whole_parts(multipart, count)
                await self._complete(multipart, kept + [(n, etag) for n, etag, _ in extra])
                return
            except (ObjectMissing, PartsChanged) as exc:
                # Completed meanwhile by another node, or a stale writer added a part.
                log.info("retrying completion of %s: %s", multipart.key, exc)
        raise StorageError(f"could not complete segment {multipart.key}")

    async def _make_part(self, target: _Multipart, part: PlannedPart) -> tuple[int, str]:
        if len(part.ranges) == 1:
            source = part.ranges[0]
            copied = await self._call(
                f"copy {source.key} into {target.key}",
                "upload_part_copy",
                Key=target.key,
                UploadId=target.upload_id,
                PartNumber=part.number,
                CopySource={"Bucket": self.bucket, "Key": source.key},
                CopySourceRange=f"bytes={source.start}-{source.start + source.length - 1}",
            )
            return part.number, str(copied["CopyPartResult"]["ETag"])
        data = b"".join([await self._get(r.key, r.start, r.length) for r in part.ranges])
        return part.number, await self._put_part(target, part.number, data)

    async def _drop_segments(self, upload_id: str) -> None:
        """Remove segment objects and abort every multipart upload of ``upload_id``: once
        the final object exists, nothing else of it is needed."""
        await self._abort_multiparts(self.final_key(upload_id), exact=True)
        await self._abort_multiparts(self._area(upload_id))
        await self._delete_prefix(self._area(upload_id))

    async def _abort_multiparts(self, prefix: str, *, exact: bool = False) -> None:
        """Abort the multipart uploads under ``prefix`` (``exact``: at that key only)."""
        key_marker, id_marker = "", ""
        while True:
            page = await self._call(
                f"list multipart uploads {prefix}",
                "list_multipart_uploads",
                Prefix=prefix,
                KeyMarker=key_marker,
                UploadIdMarker=id_marker,
            )
            for upload in page.get("Uploads", []):
                if exact and upload["Key"] != prefix:
                    continue
                with contextlib.suppress(ObjectMissing):
                    await self._call(
                        f"abort {upload['Key']}",
                        "abort_multipart_upload",
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )
            if not page.get("IsTruncated"):
                return
            key_marker = page.get("NextKeyMarker", "")
            id_marker = page.get("NextUploadIdMarker", "")

    async def _delete_prefix(self, prefix: str) -> None:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call(f"list {prefix}", "list_objects_v2", **kwargs)
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                await self._call(
                    f"delete under {prefix}",
                    "delete_objects",
                    Delete={"Objects": keys, "Quiet": True},
                )
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    async def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        if end <= start:
            return
        key = self.final_key(upload_id)
        response = await self._call(
            f"read {key}", "get_object", Key=key, Range=f"bytes={start}-{end - 1}"
        )
        received = 0
        async with _body(response, key) as stream:
            async for chunk in stream.iter_chunks(_READ_CHUNK):
                received += len(chunk)
                yield chunk
        if received != end - start:
            raise ObjectMissing(f"{key} ended after {received} of {end - start} bytes")

    async def delete(self, upload_id: str) -> None:
        await self._drop_segments(upload_id)
        await self._call(f"delete {upload_id}", "delete_object", Key=self.final_key(upload_id))

    async def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"bucket {self.bucket}" + (f" at {self.endpoint}" if self.endpoint else "")
        client = await self.client()
        try:
            await client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StorageError(
                f"no S3 credentials for {where}: set AWS_ACCESS_KEY_ID and"
                " AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            ) from None
        except ClientError as exc:
            code = _code(exc)
            if code in {"404", "NoSuchBucket", "NotFound"}:
                raise StorageError(f"{where} does not exist; create it first") from None
            if code in {"403", "AccessDenied", "Forbidden"}:
                raise StorageError(
                    f"{where} refused these credentials (AWS_ACCESS_KEY_ID and"
                    " AWS_SECRET_ACCESS_KEY); they need read, write and list rights"
                ) from None
            raise _failure(exc, f"reach {where}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"cannot reach {where}: {exc}") from exc

    async def close(self) -> None:
        if self._exit is not None:
            exit_stack, self._exit, self._client = self._exit, None, None
            await exit_stack.aclose()


class _S3Writer:
    """Writes one segment: whole parts as they fill, the rest as a tail object on flush."""

    def __init__(
        self,
        store: S3ByteStore,
        upload_id: str,
        segment: str,
        key: str,
        multipart: _Multipart | None,
        buffer: bytearray,
        buffer_start: int,
    ) -> None:
        self._store = store
        self._upload_id = upload_id
        self._segment = segment
        self._key = key
        self._multipart = multipart
        self._part_size = multipart.part_size if multipart is not None else store.part_size
        self._buffer = buffer
        self._buffer_start = buffer_start
        self._stored = buffer_start + len(buffer)  # position up to which a flush is not needed
        self._unsettled: StorageError | None = None
        self._tails: set[str] = set()  # tail objects this writer stored (or tried to)

    async def write(self, data: bytes | memoryview) -> None:
        if self._unsettled is not None:
            raise self._unsettled
        self._buffer += data
        size = self._part_size
        while len(self._buffer) >= size:
            await self._upload_part(bytes(self._buffer[:size]))
            del self._buffer[:size]
            self._buffer_start += size

    async def _upload_part(self, data: bytes) -> None:
        number = self._buffer_start // self._part_size + 1
        if number > WRITER_PARTS:
            raise StorageError(
                f"segment {self._segment} would need more than {WRITER_PARTS} parts"
                f" of {self._part_size} bytes"
            )
        try:
            if self._multipart is None:
                self._multipart = await self._store._start_multipart(
                    self._upload_id, self._segment, self._key, self._part_size
                )
            await self._store._call(
                f"upload part {number} of {self._key}",
                "upload_part",
                Key=self._multipart.key,
                UploadId=self._multipart.upload_id,
                PartNumber=number,
                Body=data,
            )
        except StorageError as exc:
            # The part may still land later, over a part a continuing writer uploaded.
            self._unsettled = exc
            raise
        self._stored = max(self._stored, self._buffer_start + len(data))

    async def flush(self, durable: bool) -> None:
        # An object stored is on stable storage: both durability settings get the same.
        if self._unsettled is not None:
            raise self._unsettled
        end = self._buffer_start + len(self._buffer)
        if self._buffer and end > self._stored:
            key = self._store._tail_key(self._upload_id, self._segment, self._buffer_start)
            self._tails.add(key)
            try:
                await self._store._call(
                    f"store the tail of {self._segment}",
                    "put_object",
                    Key=key,
                    Body=bytes(self._buffer),
                )
            except StorageError as exc:
                # Like a part: the PUT may still land, over the tail a continuing writer
                # stores at the same key.
                self._unsettled = exc
                raise
        self._stored = end

    async def close(self) -> None:
        self._buffer = bytearray()
        if self._unsettled is not None:
            raise self._unsettled

    async def abandon(self) -> None:
        # A tail stored after the assembly's clean-up listed the segments would stay for
        # ever. Before the upload is assembled, its tails may still be needed (committed
        # bytes, or a continuing writer's), and that clean-up removes them later anyway.
        if not self._tails:
            return
        if await self._store._size(self._store.final_key(self._upload_id)) is None:
            return
        for key in self._tails:
            await self._store._drop(key)


@contextlib.asynccontextmanager
async def _body(response: Any, key: str) -> AsyncIterator[Any]:
    """A response body whose read errors (timeouts, cut connections) are StorageErrors,
    like those of the request itself."""
    from aiohttp import ClientError
    from botocore.exceptions import BotoCoreError

    try:
        async with response["Body"] as stream:
            yield stream
    except (BotoCoreError, ClientError, TimeoutError) as exc:
        raise StorageError(f"read {key}: {exc}") from exc


def _quoted(etag: str) -> str:
    # RGW returns UploadPartCopy's ETag without the quotes AWS puts around it.
    return etag if etag.startswith('"') else f'"{etag}"'


async def _gather_limited(calls: Sequence[Awaitable[T]], limit: int) -> list[T]:
    """Run ``calls``, ``limit`` at a time; the first failure cancels the rest, so no part
    upload of an assembly that gave up is still on its way."""
    semaphore = asyncio.Semaphore(limit)

    async def run(call: Awaitable[T]) -> T:
        async with semaphore:
            return await call

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(run(c)) for c in calls]
    except BaseExceptionGroup as group_error:
        first = group_error.exceptions[0]
        raise first from None
    return [task.result() for task in tasks]


_SIZE = re.compile(r"(?i)^\s*(\d+)\s*(b|kib|mib|gib|k|m|g)?\s*$")
_UNITS = {None: 1, "b": 1, "k": 1024, "kib": 1024, "m": MiB, "mib": MiB, "g": GiB, "gib": GiB}


def _parse_size(text: str) -> int:
    match = _SIZE.match(text)
    if match is None:
        raise StorageError(f"bad part_size {text!r}; say e.g. 8MiB")
    unit = match.group(2).lower() if match.group(2) else None
    return int(match.group(1)) * _UNITS[unit]


def open_from_url(url: str, *, max_size: int | None = None) -> S3ByteStore:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"endpoint", "region", "part_size", "addressing"}
    if unknown:
        raise StorageError(
            f"unknown s3:// option(s) {', '.join(sorted(unknown))};"
            " known: endpoint, region, part_size, addressing"
        )
    addressing = query.get("addressing")
    if addressing not in (None, "path", "virtual", "auto"):
        raise StorageError("addressing must be path, virtual or auto")
    configured = _parse_size(query["part_size"]) if "part_size" in query else None
    return S3ByteStore(
        parts.netloc,
        parts.path.lstrip("/"),
        endpoint=query.get("endpoint"),
        region=query.get("region"),
        part_size=part_size_for(max_size, configured),
        addressing=addressing,
    )
