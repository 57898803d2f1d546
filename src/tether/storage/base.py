"""The byte store: where an upload's bytes live.

Duties, split as in DESIGN.md:

- A *segment* is written by exactly one lease holder. The store never decides which bytes
  count: the state store's committed ranges do. A segment may hold garbage past its
  committed length (a writer that lost its lease, a chunk whose checksum failed); readers
  only ever read committed ranges, and a writer continuing a segment truncates it first.
- ``flush`` returns only when the written bytes are in the OS (``durable=False``) or on
  stable storage (``durable=True``): the engine commits after ``flush``, never before.
- ``assemble`` turns committed pieces into the upload's final object. It is idempotent and
  safe to run on several nodes at once, so a node that dies half-way leaves nothing that
  another cannot finish.

Nothing here may assume the writer of a segment is the process that reads it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol


class StorageError(Exception):
    pass


class StorageFull(StorageError):
    """No space left: earlier bytes are intact; the request answers 507."""


class ObjectMissing(StorageError):
    pass


@dataclass(frozen=True)
class Piece:
    """Bytes ``[start, start + length)`` of segment ``segment`` of upload ``upload_id``;
    ``segment=None`` means the upload's assembled final object."""

    upload_id: str
    segment: str | None
    start: int
    length: int


class SegmentWriter(Protocol):
    async def write(self, data: bytes | memoryview) -> None:
        """Append ``data``; raises ``StorageFull`` when the device is full."""

    async def flush(self, durable: bool) -> None: ...

    # Optional, for stores that write local files (their ByteStore says so with
    # ``direct_writes = True``): ``async def write_from(self, source: DirectSource, count:
    # int) -> int`` appends up to ``count`` bytes moved by ``source`` (0 at its end); the
    # engine uses it instead of ``write`` when both sides can.

    async def close(self) -> None:
        """Release the writer once nothing it started is still on its way to the store.
        Raises ``StorageError`` when that cannot be known (a write whose outcome is
        unknown): the engine then lets nobody continue the segment."""

    # Optional: ``async def abandon(self) -> None``, called (closed or not) when the lease
    # it wrote under turned out to be taken; a store removes there what such a stale
    # writer may have left that no clean-up would find. Best effort.


class DirectSource(Protocol):
    """A request body that can put its bytes straight into a file (``splice(2)``), without
    passing them through Python."""

    async def move_into(self, fd: int, count: int) -> int:
        """Move up to ``count`` bytes into ``fd`` at its file position and return how many;
        0 at the end of the body. A failure to write ``fd`` raises OSError."""
        ...


class ByteStore(Protocol):
    commit_interval: int | None
    """Bytes between commits while a body streams (commits fall on segment positions that
    are multiples of it), or None for the engine's setting. A store that keeps data in
    fixed-size parts names its part size, so every mid-stream commit flushes whole parts."""

    max_upload_size: int | None
    """The largest upload the store can hold, or None for no limit of its own."""

    async def open_segment(
        self, upload_id: str, segment: str, start: int, *, origin: int | None = None
    ) -> SegmentWriter:
        """Open ``segment`` for appending at ``start`` (its committed length), discarding
        anything past it. ``origin`` is the upload offset of the segment's first byte
        (None: not known); a store may place a segment that starts the upload where the
        final object goes, so that an upload nobody took over needs no copy."""

    async def assemble(self, upload_id: str, pieces: Sequence[Piece]) -> None:
        """Make the final object of ``upload_id`` from ``pieces``, durably. Idempotent."""

    def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Stream bytes ``[start, end)`` of the final object."""

    async def delete(self, upload_id: str) -> None:
        """Remove everything of ``upload_id``; no error if nothing is there."""

    async def check(self) -> None:
        """Raise ``StorageError`` when the store cannot take writes."""

    async def close(self) -> None: ...
