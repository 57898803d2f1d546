"""The state store: upload records, offsets and leases. The only source of truth.

Rules every implementation keeps (checked by ``tests/contract/state_contract.py``):

- ``acquire`` bumps ``epoch`` by one, atomically, and never waits: a newer request
  always wins at once over an older one, hung or not.
- ``commit`` is a compare-and-set on (epoch, offset): it succeeds only for the current
  epoch and the offset the caller last saw, and raises ``StaleLease`` otherwise. Offsets
  never go back, nor past the length (``check_commit``).
- ``tail``/``tail_epoch`` name the segment whose writer released its lease cleanly; the
  next holder may keep writing that segment only when ``tail_epoch == epoch - 1``, i.e.
  nobody acquired in between. A segment of a superseded writer is never continued.

Nothing here assumes one process: every decision is made by the store's own atomic
operations, so any number of nodes may share one store.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tether.protocol.commands import Metadata


class StateError(Exception):
    """Base for store errors the engine handles."""


class StaleLease(StateError):
    """The caller's epoch or offset is no longer current: a newer request took over,
    or the upload is gone."""


class UploadExists(StateError):
    pass


class StoreUnavailable(StateError):
    """The store cannot be reached; the request may be retried (503)."""


@dataclass(frozen=True)
class Segment:
    """Bytes ``[start, start + length)`` of the byte-store segment ``name``."""

    name: str
    start: int
    length: int


@dataclass(frozen=True)
class UploadRecord:
    id: str
    length: int | None
    offset: int = 0
    metadata: Metadata = ()
    partial: bool = False
    parts: tuple[str, ...] | None = None  # set for a final upload: the partials it joins
    created_at: float = 0.0
    expires_at: float | None = None
    epoch: int = 0
    tail: str | None = None
    tail_epoch: int = -1
    segments: tuple[Segment, ...] = ()
    assembled: bool = False
    last_client: str | None = None
    last_node: str | None = None
    client_switches: int = 0
    node_switches: int = 0

    @property
    def complete(self) -> bool:
        return self.length is not None and self.offset == self.length

    @property
    def is_final(self) -> bool:
        return self.parts is not None

    def continuable_tail(self) -> Segment | None:
        """The segment this lease may keep writing, if the previous holder left it cleanly."""
        if self.tail is None or self.tail_epoch != self.epoch - 1:
            return None
        for seg in reversed(self.segments):
            if seg.name == self.tail:
                return seg
        return Segment(self.tail, 0, 0)


@dataclass(frozen=True)
class Commit:
    """A lease holder's compare-and-set: from ``expected_offset`` to ``record.offset``."""

    epoch: int
    expected_offset: int
    offset: int
    segments: tuple[Segment, ...]
    length: int | None
    expires_at: float | None
    release_tail: str | None = None  # segment to leave continuable; needs ``release``
    release: bool = False
    # The change must survive a crash of the store's server before the call returns, even
    # where the store would otherwise answer sooner (PostgreSQL under --durability
    # process): set for a first declared length, which re-sending bytes cannot restore.
    settle: bool = False

    @property
    def completes(self) -> bool:
        return self.length is not None and self.offset == self.length


class StateStore(Protocol):
    async def create(self, record: UploadRecord) -> None:
        """Store a new record; raises ``UploadExists`` if the id is taken."""

    async def get(self, upload_id: str) -> UploadRecord | None: ...

    async def acquire(self, upload_id: str, *, node: str, client: str | None) -> UploadRecord:
        """Take the lease: epoch += 1, count client/node switches, return the new record.
        Raises ``KeyError`` when the upload does not exist."""

    async def commit(self, upload_id: str, commit: Commit) -> None:
        """Compare-and-set progress; raises ``StaleLease`` if epoch or offset moved.

        Returns nothing: the record after it is ``apply_commit(lease holder's record,
        commit)``, which the holder works out itself. Nobody else can change the record
        while the lease stands (any change takes a new lease, which fails this commit), so
        reading it back would cost every append a record to encode, send and parse."""

    async def mark_assembled(self, upload_id: str) -> None: ...

    async def delete(self, upload_id: str) -> bool:
        """Remove the record; True if it existed."""

    async def expire(self, upload_id: str, now: float) -> bool:
        """Remove the record only if it is still incomplete and expired at ``now``, so a
        reaper racing a fresh commit on another node never deletes a live upload."""

    async def expired(self, now: float, limit: int) -> list[str]:
        """Ids of incomplete uploads whose ``expires_at`` is before ``now``."""

    async def check(self) -> None:
        """Raise ``StoreUnavailable`` if the store cannot serve requests."""

    async def close(self) -> None: ...


def check_commit(commit: Commit) -> None:
    """Reject, before touching any record, a commit no lease holder may make: one that
    moves the offset back or past the length. Such a commit is a bug in the caller, so it
    raises ``ValueError``, not ``StaleLease``; every store calls this first."""
    if commit.offset < commit.expected_offset:
        raise ValueError(
            f"commit moves the offset back: {commit.expected_offset} -> {commit.offset}"
        )
    if commit.length is not None and commit.offset > commit.length:
        raise ValueError(f"commit moves the offset {commit.offset} past the length {commit.length}")


def apply_commit(record: UploadRecord, commit: Commit) -> UploadRecord:
    """The record after ``commit``: the one definition every store's CAS must match."""
    check_commit(commit)
    if record.epoch != commit.epoch or record.offset != commit.expected_offset:
        raise StaleLease(record.id)
    changes: dict[str, Any] = {
        "offset": commit.offset,
        "segments": commit.segments,
        "length": commit.length,
        "expires_at": commit.expires_at,
    }
    if commit.release:
        changes["tail"] = commit.release_tail
        changes["tail_epoch"] = commit.epoch
    return replace(record, **changes)


def is_expired(record: UploadRecord, now: float) -> bool:
    return record.expires_at is not None and record.expires_at < now and not record.complete


def acquire_record(record: UploadRecord, node: str, client: str | None) -> UploadRecord:
    return replace(
        record,
        epoch=record.epoch + 1,
        client_switches=record.client_switches
        + int(
            record.last_client is not None and client is not None and client != record.last_client
        ),
        node_switches=record.node_switches
        + int(record.last_node is not None and node != record.last_node),
        last_client=client if client is not None else record.last_client,
        last_node=node,
    )


def segments_to_json(segments: tuple[Segment, ...]) -> str:
    return json.dumps([[s.name, s.start, s.length] for s in segments], separators=(",", ":"))


@functools.lru_cache(maxsize=1024)
def segments_from_json(text: str) -> tuple[Segment, ...]:
    return tuple(Segment(str(n), int(a), int(b)) for n, a, b in json.loads(text))


def metadata_to_json(metadata: Metadata) -> str:
    return json.dumps(
        [[k, None if v is None else v.hex()] for k, v in metadata], separators=(",", ":")
    )


@functools.lru_cache(maxsize=1024)
def metadata_from_json(text: str) -> Metadata:
    return tuple((str(k), None if v is None else bytes.fromhex(v)) for k, v in json.loads(text))
