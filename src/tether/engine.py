"""The upload service: leases, segments, commits, completion, expiry.

The core invariant (DESIGN.md): an append takes a lease (epoch += 1) and wins at once; it
writes into a segment only it writes; its progress becomes real only through a
compare-and-set commit on (epoch, offset) in the state store, made after the bytes were
flushed. A superseded writer's next commit fails and it stops; whatever it wrote past its
last commit lies in a segment nobody references. Nothing here assumes one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import cast

from tether.protocol import errors, ids
from tether.protocol.checksums import new_hasher
from tether.protocol.commands import Append, Create
from tether.protocol.errors import UploadError
from tether.protocol.headers import ChecksumHeader
from tether.state.base import (
    Commit,
    Segment,
    StaleLease,
    StateStore,
    UploadExists,
    UploadRecord,
    apply_commit,
    is_expired,
)
from tether.storage.base import (
    ByteStore,
    DirectSource,
    ObjectMissing,
    Piece,
    SegmentWriter,
    StorageError,
    StorageFull,
)

log = logging.getLogger("tether.engine")

MiB = 1024 * 1024


class BodyInterrupted(Exception):
    """Raised by a body stream that ended before its end: the client went away, stalled,
    or this node stopped the request (takeover, termination, shutdown)."""

    def __init__(self, error: UploadError) -> None:
        super().__init__(str(error))
        self.error = error


class BodyQuiet(Exception):
    """Raised by a body stream whose client has sent nothing for a while, though the request
    goes on: the engine commits what it has, then reads on. A client that lost its network
    silently (a mobile client whose address changed) comes back through another connection,
    perhaps on another node, whose takeover then finds those bytes committed, not lost with
    the old request. Raised between steps of the body, never with bytes half moved."""


class Interruptible:
    """A request the engine can stop from outside (a body stream implements this)."""

    def interrupt(self, error: UploadError) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class EngineConfig:
    node_id: str
    max_size: int | None = None
    expire_after: float | None = 24 * 3600.0
    durable: bool = False
    # Commit at least this often while a body streams, so a connection that dies silently
    # still leaves its bytes acknowledged...
    commit_interval: int = 4 * MiB
    # ...but no sooner than this many seconds after the request's previous commit: on a
    # fast link every 4 MiB is hundreds of commits a second per upload, each a round trip
    # to a shared state store, for the sake of a fraction of a second of re-sending. Not
    # on a store that sets its own interval (S3 parts): it commits at each boundary.
    commit_period: float = 0.25
    # Put this node's id in the ids of the uploads it creates (``n1.<hex>``), for load
    # balancers that route by URL. A hint only: no node ever reads it back.
    node_in_ids: bool = False

    def __post_init__(self) -> None:
        if self.node_in_ids:
            ids.check_node_id(self.node_id)


@dataclass
class AppendOutcome:
    record: UploadRecord
    received: int  # bytes of this request's body that were committed


def new_upload_id(node: str | None = None) -> str:
    """128 random bits in hex (unguessable, safe in a path, a key and a file name), after
    ``node`` and a dot when given (``protocol/ids.py``)."""
    return ids.new_upload_id(node)


def extend(segments: tuple[Segment, ...], name: str, position: int, n: int) -> tuple[Segment, ...]:
    """Add ``n`` bytes written at ``position`` of segment ``name`` to the committed list."""
    if n == 0:
        return segments
    if segments:
        last = segments[-1]
        if last.name == name and last.start + last.length == position:
            return (*segments[:-1], Segment(name, last.start, last.length + n))
    return (*segments, Segment(name, position, n))


class UploadService:
    def __init__(
        self,
        state: StateStore,
        storage: ByteStore,
        config: EngineConfig,
        clock: Callable[[], float] = time.time,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = state
        self.storage = storage
        self.config = config
        self.clock = clock  # wall time, for expiry
        self.timer = timer  # for the commit period
        # A store that sets its own interval (S3) commits only on its part boundaries: a
        # part must be whole to be committed. So neither the commit period nor a quiet
        # commit applies to it.
        self.whole_parts = bool(storage.commit_interval)
        # Requests streaming into an upload on this node. Only an optimisation: a stale
        # request is fenced by the state store anyway; this just stops it sooner.
        self._inflight: dict[str, dict[Interruptible, asyncio.Event]] = {}

    # -- lifecycle helpers -------------------------------------------------------------

    def _new_id(self) -> str:
        return new_upload_id(self.config.node_id if self.config.node_in_ids else None)

    def _expires(self) -> float | None:
        after = self.config.expire_after
        return None if after is None else self.clock() + after

    async def _load(self, upload_id: str) -> UploadRecord:
        record = await self.state.get(upload_id)
        if record is None:
            raise errors.not_found()
        if is_expired(record, self.clock()):
            raise errors.gone()
        return record

    def register(self, upload_id: str, request: Interruptible) -> None:
        for other in self._inflight.get(upload_id, {}):
            other.interrupt(errors.superseded())
        self._inflight.setdefault(upload_id, {})[request] = asyncio.Event()

    def unregister(self, upload_id: str, request: Interruptible) -> None:
        requests = self._inflight.get(upload_id)
        if requests is not None:
            done = requests.pop(request, None)
            if done is not None:
                done.set()
            if not requests:
                del self._inflight[upload_id]

    def interrupt_all(self, error: UploadError) -> None:
        for requests in list(self._inflight.values()):
            for request in list(requests):
                request.interrupt(error)

    async def _settle_local(self, upload_id: str, error: UploadError) -> None:
        """Stop this node's in-flight appends to ``upload_id`` and wait until each has
        committed what it received, so an offset read afterwards is final."""
        requests = self._inflight.get(upload_id)
        if not requests:
            return
        waits = []
        for request, done in list(requests.items()):
            request.interrupt(error)
            waits.append(done.wait())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await asyncio.gather(*waits)

    # -- commands ----------------------------------------------------------------------

    async def create(
        self,
        command: Create,
        body: AsyncIterator[bytes] | None,
        *,
        client: str | None,
        request: Interruptible | None = None,
        on_created: Callable[[UploadRecord], Awaitable[None]] | None = None,
    ) -> AppendOutcome:
        """Create an upload and stream its first bytes, if any. ``on_created`` runs once the
        upload exists and before its body is read (the IETF draft's 104 goes out there)."""
        if command.final_of is not None:
            return AppendOutcome(await self._create_final(command, client), 0)
        length = command.length
        if command.complete and command.body.content_length is not None:
            length = _agree(length, command.body.content_length)
        if (
            length is not None
            and self.config.max_size is not None
            and length > self.config.max_size
        ):
            raise errors.too_large(f"upload exceeds the maximum size {self.config.max_size}")
        record = UploadRecord(
            id=self._new_id(),
            length=length,
            metadata=command.metadata,
            partial=command.partial,
            created_at=self.clock(),
            expires_at=self._expires(),
            # Created holding the lease of epoch 1, so creation-with-upload needs no
            # second round trip to the state store.
            epoch=1,
            last_client=client,
            last_node=self.config.node_id,
        )
        record = await self._insert(record)
        if on_created is not None:
            await on_created(record)
        if length == 0:
            await self._assemble(record)
            return AppendOutcome(replace(record, assembled=True), 0)
        if body is None or not command.body.present:
            # Nobody holds epoch 1 now; the next append takes epoch 2 and a new segment.
            return AppendOutcome(record, 0)
        return await self._stream(
            record,
            body,
            length=length,
            complete=command.complete,
            checksum=command.checksum,
            request=request,
            content_length=command.body.content_length,
        )

    async def _insert(self, record: UploadRecord) -> UploadRecord:
        for _ in range(3):
            try:
                await self.state.create(record)
                return record
            except UploadExists:
                record = replace(record, id=self._new_id())
        raise RuntimeError("could not allocate an upload id")

    async def head(self, upload_id: str, *, client: str | None = None) -> UploadRecord:
        """Where the upload stands. For an incomplete upload this also takes over from any
        append still streaming (as a new append would, and as tusd does): the client asks
        because it is about to resume, and the offset it gets must not move afterwards, or
        its next append would meet a 409. Appends on this node first commit what they
        received; appends elsewhere are fenced by the epoch bump."""
        record = await self._load(upload_id)
        if record.is_final:
            return record if record.complete else await self._finish_final(record)
        if record.complete:
            return record
        await self._settle_local(upload_id, errors.superseded())
        try:
            leased = await self.state.acquire(upload_id, node=self.config.node_id, client=client)
        except KeyError:
            raise errors.not_found() from None
        released = await self._release_quietly(leased)
        return released if released is not None else await self._load(upload_id)

    async def append(
        self,
        command: Append,
        body: AsyncIterator[bytes],
        *,
        client: str | None,
        request: Interruptible | None = None,
    ) -> AppendOutcome:
        upload_id = command.upload_id
        try:
            record = await self.state.acquire(upload_id, node=self.config.node_id, client=client)
        except KeyError:
            raise errors.not_found() from None
        try:
            if is_expired(record, self.clock()):
                raise errors.gone()
            length = self._check_append(record, command)
        except UploadError:
            # Leave the upload as it was, tail included: this request wrote nothing.
            await self._release_quietly(record)
            raise
        return await self._stream(
            record,
            body,
            length=length,
            complete=command.complete,
            checksum=command.checksum,
            request=request,
            content_length=command.body.content_length,
        )

    def _check_append(self, record: UploadRecord, command: Append) -> int | None:
        if record.is_final:
            raise UploadError(403, "a final upload cannot be patched")
        if command.offset != record.offset:
            raise errors.offset_mismatch(record.offset, command.offset)
        length = record.length
        if command.length is not None:
            if length is not None and command.length != length:
                raise errors.inconsistent_length(
                    f"Upload-Length {command.length} differs from the upload's length {length}"
                )
            if command.length < record.offset:
                raise errors.inconsistent_length("Upload-Length is below the current offset")
            length = command.length
        if command.complete and command.body.content_length is not None:
            length = _agree(length, record.offset + command.body.content_length)
        if record.complete and (command.body.present or command.complete is False):
            raise errors.already_complete()
        if (
            self.config.max_size is not None
            and length is not None
            and length > self.config.max_size
        ):
            raise errors.too_large(f"upload exceeds the maximum size {self.config.max_size}")
        cl = command.body.content_length
        if cl is not None and length is not None and record.offset + cl > length:
            raise errors.too_large("body goes past Upload-Length")
        if (
            cl is not None
            and self.config.max_size is not None
            and record.offset + cl > self.config.max_size
        ):
            raise errors.too_large(f"body goes past the maximum size {self.config.max_size}")
        return length

    async def _release_quietly(self, record: UploadRecord) -> UploadRecord | None:
        """Give the lease back unchanged (tail included); None if it was taken meanwhile."""
        tail = record.continuable_tail()
        release = _release(
            record,
            record.offset,
            record.segments,
            record.length,
            record.expires_at,
            tail.name if tail else None,
        )
        try:
            return await self._commit(record, release)
        except StaleLease:
            return None

    async def _commit(self, record: UploadRecord, commit: Commit) -> UploadRecord:
        """Make ``commit`` as the lease holder of ``record``; the record it leaves."""
        await self.state.commit(record.id, commit)
        return apply_commit(record, commit)

    async def _stream(
        self,
        record: UploadRecord,
        body: AsyncIterator[bytes],
        *,
        length: int | None,
        complete: bool | None,
        checksum: ChecksumHeader | None,
        request: Interruptible | None,
        content_length: int | None = None,
    ) -> AppendOutcome:
        upload_id = record.id
        tail = record.continuable_tail()
        if tail is not None:
            name, position = tail.name, tail.start + tail.length
        else:
            # Unique even if a state store ever handed out an epoch twice (a database
            # crash that lost recent commits): two writers must never share a segment.
            name, position = f"e{record.epoch}-{secrets.token_hex(4)}", 0
        hasher = new_hasher(checksum.algorithm) if checksum is not None else None
        limit = length if length is not None else self.config.max_size
        interval = self.storage.commit_interval or self.config.commit_interval
        period = 0.0 if self.whole_parts else self.config.commit_period
        timer = self.timer
        last_commit = timer()
        durable = self.config.durable
        writer = None
        start_offset = record.offset
        declaring = record.length is None  # so a length this request gives is a first
        written = 0  # bytes of this body written to the segment
        committed = 0  # of which committed
        if request is not None:
            self.register(upload_id, request)

        def commit_due() -> bool:
            """Whether an interval boundary mid-body is worth a commit now."""
            return period <= 0 or timer() - last_commit >= period

        async def commit(*, release: bool, final_length: int | None) -> UploadRecord:
            nonlocal record, committed, written, writer, last_commit
            current = writer
            if writer is not None and written > committed:
                try:
                    await writer.flush(durable)
                except StorageError:
                    # Unflushed bytes are never acknowledged: they may be lost already.
                    written = committed
                    raise
            tail: str | None = name
            if release and writer is not None:
                # Closed before the lease is given back: the next holder may continue this
                # segment at once, and nothing of this writer may still be on its way.
                closing, writer = writer, None
                try:
                    await closing.close()
                except StorageError as exc:
                    log.warning("segment %s of %s not continuable: %s", name, upload_id, exc)
                    tail = None
            segments = extend(record.segments, name, position + committed, written - committed)
            new = Commit(
                epoch=record.epoch,
                expected_offset=record.offset,
                offset=start_offset + written,
                segments=segments,
                length=final_length,
                expires_at=self._expires(),
                release=release,
                release_tail=tail if release else None,
                settle=release and declaring and final_length is not None,
            )
            try:
                record = await self._commit(record, new)
            except StaleLease:
                abandon = getattr(current, "abandon", None)
                if abandon is not None:
                    with contextlib.suppress(StorageError):
                        await abandon()
                raise errors.superseded() from None
            committed = written
            last_commit = timer()
            return record

        async def commit_quiet() -> None:
            # Not for a checksummed body (kept whole or not at all), nor at the upload's last
            # byte (a chunked body yet to send its end): only the request's final commit
            # completes it.
            if (
                written > committed
                and hasher is None
                and not self.whole_parts
                and (length is None or start_offset + written != length)
            ):
                await commit(release=False, final_length=length)

        # A body the kernel can move into the segment (a socket spliced into a file) skips
        # Python altogether; only for plain bodies whose end is known to fit the upload.
        write_from: Callable[[DirectSource, int], Awaitable[int]] | None = None
        direct = (
            hasher is None
            and content_length is not None
            and getattr(self.storage, "direct_writes", False)
            and getattr(body, "direct", False)
            and (limit is None or start_offset + content_length <= limit)
        )

        failure: UploadError | None = None
        try:
            try:
                if direct:
                    writer = await self._open_segment(record, name, position)
                    write_from = getattr(writer, "write_from", None)
                if write_from is not None:
                    while True:
                        room = interval - (position + written) % interval
                        try:
                            n = await write_from(cast(DirectSource, body), room)
                        except BodyQuiet:
                            await commit_quiet()
                            continue
                        if n == 0:
                            break
                        written += n
                        # (At the body's end the releasing commit follows at once.)
                        if n == room and written != content_length and commit_due():
                            await commit(release=False, final_length=length)
                else:
                    chunks = aiter(body)
                    while True:
                        try:
                            chunk = await anext(chunks)
                        except StopAsyncIteration:
                            break
                        except BodyQuiet:
                            await commit_quiet()
                            continue
                        n = len(chunk)
                        if limit is not None and start_offset + written + n > limit:
                            what = "Upload-Length" if length is not None else "the maximum size"
                            failure = errors.too_large(f"body goes past {what}")
                            break
                        if writer is None:
                            writer = await self._open_segment(record, name, position)
                        if hasher is not None:
                            await writer.write(chunk)
                            written += n
                            hasher.update(chunk)
                            continue
                        # Commit when the segment crosses a multiple of the interval (once
                        # the period has passed), not every interval bytes of this request: a
                        # store that stores whole parts (S3) then commits exactly at its part
                        # boundaries, with nothing left over to store as a separate piece.
                        room = interval - (position + written) % interval
                        if n < room:
                            await writer.write(chunk)
                            written += n
                            continue
                        view = memoryview(chunk)
                        while len(view) >= room:
                            await writer.write(view[:room])
                            written += room
                            view = view[room:]
                            if written != content_length and commit_due():
                                await commit(release=False, final_length=length)
                            room = interval
                        if view:
                            await writer.write(view)
                            written += len(view)
            except BodyInterrupted as exc:
                failure = exc.error
            except StorageError as exc:
                failure = _storage_failure(exc)
            if (
                hasher is not None
                and checksum is not None
                and (failure is not None or hasher.digest() != checksum.digest)
            ):
                # The chunk is discarded whole: the next writer of this segment truncates
                # it back to the committed length.
                written = committed
                if failure is None:
                    failure = errors.checksum_mismatch()
            final_length = length
            if complete and failure is None:
                if final_length is None:
                    final_length = start_offset + written
                elif start_offset + written != final_length:
                    # The body claimed to complete the upload but ended short of its length.
                    failure = errors.inconsistent_length(
                        f"inconsistent length: the upload ends at {final_length}"
                        f" but the body ended at {start_offset + written}"
                    )
            try:
                record = await commit(release=True, final_length=final_length)
            except StorageError as exc:
                # The flush failed: give the lease back with what was committed before.
                failure = failure or _storage_failure(exc)
                record = await commit(release=True, final_length=length)
        finally:
            if writer is not None:
                try:
                    await writer.close()
                except StorageError as exc:
                    log.warning("closing segment %s of %s: %s", name, upload_id, exc)
            if request is not None:
                self.unregister(upload_id, request)
        if failure is not None:
            raise failure
        if record.complete:
            await self._assemble(record)
            record = replace(record, assembled=True)
        return AppendOutcome(record, written)

    async def _open_segment(self, record: UploadRecord, name: str, position: int) -> SegmentWriter:
        try:
            return await self.storage.open_segment(
                record.id, name, position, origin=record.offset - position
            )
        except ObjectMissing:
            # The segment is gone because the upload moved on without this request
            # (assembled or deleted by a newer lease holder): this request is stale.
            latest = await self.state.get(record.id)
            if latest is None or latest.epoch != record.epoch:
                raise errors.superseded() from None
            raise

    async def _assemble(self, record: UploadRecord) -> None:
        pieces = [Piece(record.id, s.name, s.start, s.length) for s in record.segments]
        await self.storage.assemble(record.id, pieces)
        await self.state.mark_assembled(record.id)

    async def ensure_assembled(self, record: UploadRecord) -> UploadRecord:
        if record.is_final:
            record = await self._finish_final(record)
        if not record.complete:
            raise UploadError(409, "upload is not complete")
        if not record.assembled:
            await self._assemble(record)
            record = replace(record, assembled=True)
        return record

    async def terminate(self, upload_id: str) -> None:
        record = await self.state.get(upload_id)
        if record is None:
            raise errors.not_found()
        for request in list(self._inflight.get(upload_id, ())):
            request.interrupt(errors.gone("upload was terminated"))
        await self.state.delete(upload_id)
        await self.storage.delete(upload_id)

    async def download(self, upload_id: str) -> UploadRecord:
        return await self.ensure_assembled(await self._load(upload_id))

    # -- concatenation -----------------------------------------------------------------

    async def _create_final(self, command: Create, client: str | None) -> UploadRecord:
        assert command.final_of is not None
        lengths: list[int | None] = []
        for part_id in command.final_of:
            part = await self.state.get(part_id)
            if part is None or is_expired(part, self.clock()):
                raise errors.bad_request(f"Upload-Concat names an unknown upload {part_id}")
            if not part.partial:
                raise errors.bad_request(f"Upload-Concat names {part_id}, which is not partial")
            lengths.append(part.length)
        total = None if any(n is None for n in lengths) else sum(n or 0 for n in lengths)
        if total is not None and self.config.max_size is not None and total > self.config.max_size:
            raise errors.too_large(f"concatenation exceeds the maximum size {self.config.max_size}")
        record = UploadRecord(
            id=self._new_id(),
            length=total,
            metadata=command.metadata,
            parts=command.final_of,
            created_at=self.clock(),
            expires_at=self._expires(),
            last_client=client,
            last_node=self.config.node_id,
        )
        return await self._finish_final(await self._insert(record))

    async def _finish_final(self, record: UploadRecord) -> UploadRecord:
        """Complete and assemble a final upload whose partials are all complete; else return
        it as it is. Idempotent, and safe on several nodes at once."""
        assert record.parts is not None
        if record.assembled:
            return record
        parts: list[UploadRecord] = []
        for part_id in record.parts:
            part = await self.state.get(part_id)
            if part is None:
                raise errors.gone(f"partial upload {part_id} is gone")
            if not part.complete:
                return record
            parts.append(part)
        total = sum(p.length or 0 for p in parts)
        for part in parts:
            await self.ensure_assembled(part)
        await self.storage.assemble(record.id, [Piece(p.id, None, 0, p.length or 0) for p in parts])
        # Another finisher may hold the lease (or have died holding it): a new lease always
        # wins, so a few tries settle it unless finishers keep racing.
        for _ in range(8):
            if record.complete:
                break
            try:
                leased = await self.state.acquire(record.id, node=self.config.node_id, client=None)
                record = await self._commit(
                    leased, _release(leased, total, leased.segments, total, leased.expires_at, None)
                )
            except StaleLease:
                latest = await self.state.get(record.id)
                if latest is None:
                    raise errors.gone() from None
                record = latest
            except KeyError:
                raise errors.gone() from None
        if not record.complete:
            raise UploadError(
                503, "concatenation is contended; retry", headers=(("Retry-After", "1"),)
            )
        await self.state.mark_assembled(record.id)
        return replace(record, assembled=True)

    # -- expiry ------------------------------------------------------------------------

    async def reap_expired(self, limit: int = 100) -> int:
        """Delete expired incomplete uploads; safe to run on every node at once."""
        now = self.clock()
        removed = 0
        for upload_id in await self.state.expired(now, limit):
            if await self.state.expire(upload_id, now):
                await self.storage.delete(upload_id)
                removed += 1
        return removed

    async def run_reaper(self, period: float) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                removed = await self.reap_expired()
                if removed:
                    log.info("removed %d expired uploads", removed)
            except Exception:
                log.exception("expiry sweep failed")


def _storage_failure(exc: StorageError) -> UploadError:
    if isinstance(exc, StorageFull):
        log.warning("storage full: %s", exc)
        return errors.storage_full()
    log.error("storage failure: %s", exc)
    return UploadError(500, "storage failure: bytes up to Upload-Offset are kept")


def _agree(length: int | None, implied: int) -> int:
    if length is not None and length != implied:
        raise errors.inconsistent_length(
            f"the body implies length {implied}, the upload's length is {length}"
        )
    return implied


def _release(
    record: UploadRecord,
    offset: int,
    segments: tuple[Segment, ...],
    length: int | None,
    expires_at: float | None,
    tail: str | None,
) -> Commit:
    return Commit(
        epoch=record.epoch,
        expected_offset=record.offset,
        offset=offset,
        segments=segments,
        length=length,
        expires_at=expires_at,
        release=True,
        release_tail=tail,
    )
