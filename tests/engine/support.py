"""Engines on shared stores, hand-made request bodies, and the checks the engine tests share.

A ``Stack`` is one state store and one byte store; ``stack.engine(node)`` starts another node
on them, with its own handles where the backend has separate handles (SQLite + filesystem),
so several engines behave like several processes sharing a database and a data directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.contract.backends import Backend, Handles
from tether.engine import BodyInterrupted, EngineConfig, Interruptible, UploadService
from tether.protocol import errors
from tether.protocol.commands import TUS, Append, Body, Create, Metadata
from tether.protocol.errors import UploadError
from tether.protocol.headers import ChecksumHeader
from tether.state.base import StateStore, UploadRecord
from tether.storage.base import ByteStore
from tether.storage.filesystem import FilesystemByteStore

KiB = 1024
INTERVAL = 64 * KiB  # the smallest commit interval worth testing with
SUPERSEDED = errors.superseded().reason


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Stack:
    states: Handles[StateStore]
    bytes: Handles[ByteStore]
    clock: Clock = field(default_factory=Clock)
    engines: list[UploadService] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.states.backend.name}+{self.bytes.backend.name}"

    def engine(
        self,
        node: str = "n1",
        *,
        state: StateStore | None = None,
        commit_interval: int = INTERVAL,
        commit_period: float = 0.0,
        **config: Any,
    ) -> UploadService:
        # Period 0: the tests place commits by bytes alone, unless they test the period
        # (which runs on ``clock`` too: nothing here waits for real time).
        engine = UploadService(
            state if state is not None else self.states.open(),
            self.bytes.open(),
            EngineConfig(
                node_id=node,
                commit_interval=commit_interval,
                commit_period=commit_period,
                **config,
            ),
            clock=self.clock,
            timer=self.clock,
        )
        self.engines.append(engine)
        return engine

    async def aclose(self) -> None:
        await self.states.aclose()
        await self.bytes.aclose()


def open_stack(state: Backend[StateStore], storage: Backend[ByteStore], tmp_path: Path) -> Stack:
    return Stack(Handles(state, state.url(tmp_path)), Handles(storage, storage.url(tmp_path)))


def pattern(n: int, seed: int = 0) -> bytes:
    """``n`` reproducible bytes that no shifted or spliced copy of themselves matches."""
    return random.Random(seed).randbytes(n)


# -- commands ------------------------------------------------------------------------------


def create_command(
    length: int | None,
    *,
    metadata: Metadata = (),
    partial: bool = False,
    final_of: tuple[str, ...] | None = None,
    body: int | None = None,
) -> Create:
    """``body``: the Content-Length of bytes sent with the creation request, if any."""
    return Create(
        TUS,
        length,
        metadata,
        Body(body, present=body is not None),
        partial=partial,
        final_of=final_of,
    )


def append_command(
    upload_id: str,
    offset: int,
    *,
    length: int | None = None,
    content_length: int | None = None,
    checksum: ChecksumHeader | None = None,
) -> Append:
    return Append(
        TUS,
        upload_id,
        offset,
        Body(content_length, present=content_length != 0),  # as message.py parses it
        length=length,
        checksum=checksum,
    )


def sha1(data: bytes) -> ChecksumHeader:
    return ChecksumHeader("sha1", hashlib.sha1(data).digest())


async def create(engine: UploadService, length: int | None, **kwargs: Any) -> UploadRecord:
    outcome = await engine.create(create_command(length, **kwargs), None, client="client")
    return outcome.record


async def append(
    engine: UploadService,
    upload_id: str,
    offset: int,
    data: bytes | Stream,
    *,
    client: str | None = "client",
    **kwargs: Any,
) -> UploadRecord:
    body = data if isinstance(data, Stream) else Stream(data)
    command = append_command(upload_id, offset, **kwargs)
    outcome = await engine.append(command, body, client=client)
    return outcome.record


async def final_bytes(engine: UploadService, upload_id: str) -> bytes:
    """The upload's bytes as a download serves them; for the filesystem store also checks
    the final file holds exactly those bytes and nothing of the segments is left."""
    record = await engine.download(upload_id)
    assert record.length is not None
    data = b"".join([c async for c in engine.storage.read(upload_id, 0, record.length)])
    if isinstance(engine.storage, FilesystemByteStore):
        final = engine.storage.final_path(upload_id)
        names = sorted(p.name for p in final.parent.iterdir())
        if record.is_final and "parts.json" in names:
            # A concatenation: links to its parts' files and the manifest, nothing copied.
            assert names == sorted([*(f"part-{i}" for i in range(len(names) - 1)), "parts.json"])
        else:
            assert final.stat().st_size == record.length
            assert names == ["data"]
    return data


def segment_inode(engine: UploadService, upload_id: str, segment: str) -> int | None:
    if not isinstance(engine.storage, FilesystemByteStore):
        return None
    return os.stat(engine.storage.root / upload_id / f"{segment}.seg").st_ino


def final_inode(engine: UploadService, upload_id: str) -> int | None:
    if not isinstance(engine.storage, FilesystemByteStore):
        return None
    return engine.storage.final_path(upload_id).stat().st_ino


async def offset_of(engine: UploadService, upload_id: str) -> int:
    record = await engine.state.get(upload_id)
    assert record is not None
    return record.offset


def is_superseded(exc: BaseException) -> bool:
    return isinstance(exc, UploadError) and exc.status == 409 and exc.reason == SUPERSEDED


# -- request bodies ------------------------------------------------------------------------


class Stream(Interruptible):
    """A hand-made request body.

    Yields ``data`` in ``chunk``-sized pieces. With ``hang_at``, stops after that many bytes
    and waits (like a half-open connection) until ``release()``; then yields ``after``
    instead of the rest when given. With ``fail_at``, raises ``BodyInterrupted`` after that
    many bytes, as a dropped connection does. ``interrupt`` (the engine stopping the
    request) wakes a waiting body with ``BodyInterrupted``.
    """

    def __init__(
        self,
        data: bytes,
        *,
        chunk: int = 4 * KiB,
        hang_at: int | None = None,
        after: bytes | None = None,
        fail_at: int | None = None,
        fail_with: UploadError | None = None,
    ) -> None:
        self.data = data
        self.chunk = chunk
        self.hang_at = hang_at
        self.after = after
        self.fail_at = fail_at
        self.fail_with = fail_with or UploadError(400, "client disconnected mid-body")
        self.reached = asyncio.Event()  # set once the body hangs
        self._wake = asyncio.Event()
        self._stop: UploadError | None = None
        self.sent = 0
        self._stream: AsyncIterator[bytes] | None = None

    def release(self) -> None:
        self._wake.set()

    def interrupt(self, error: UploadError) -> None:
        if self._stop is None:
            self._stop = error
        self._wake.set()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        if self._stream is None:
            self._stream = self._chunks()
        return await anext(self._stream)

    def _pieces(self, data: bytes) -> list[bytes]:
        return [data[i : i + self.chunk] for i in range(0, len(data), self.chunk)]

    async def _chunks(self) -> AsyncIterator[bytes]:
        head, tail = self.data, b""
        if self.hang_at is not None:
            head, tail = self.data[: self.hang_at], self.data[self.hang_at :]
        if self.fail_at is not None:
            head = head[: self.fail_at]
        for piece in self._pieces(head):
            if self._stop is not None:
                raise BodyInterrupted(self._stop)
            self.sent += len(piece)
            yield piece
            await asyncio.sleep(0)  # as a socket read would
        if self.fail_at is not None:
            raise BodyInterrupted(self.fail_with)
        if self.hang_at is None:
            return
        self.reached.set()
        await self._wake.wait()
        if self._stop is not None:
            raise BodyInterrupted(self._stop)
        for piece in self._pieces(tail if self.after is None else self.after):
            self.sent += len(piece)
            yield piece
            await asyncio.sleep(0)


async def start(awaitable: Awaitable[Any]) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(awaitable)
    await asyncio.sleep(0)
    return task
