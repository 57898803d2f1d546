"""What both drivers share: reading request bodies from the source, checksums, turning a
flow's ``Request`` into an httpx request and an httpx response (or error) back into a
``Reply``, and progress reports."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import httpx

from tether.client.wire import NetworkFailure, Reply, Request, Slice
from tether.protocol.checksums import new_hasher

PIECE = 1024 * 1024  # bytes handed to the socket at a time, and counted as sent
ERROR_TEXT = 1024  # how much of an error body to keep as the server's reason


@dataclass(frozen=True)
class ProgressReport:
    total: int
    acknowledged: int  # bytes the server confirmed
    sent: int  # bytes put on the wire, re-sends included
    rate: float  # bytes per second acknowledged, over the last few seconds
    elapsed: float


class Meter:
    """Counts bytes sent and reports progress at most every ``interval`` seconds."""

    def __init__(
        self,
        total: int,
        acknowledged: Callable[[], int],
        callback: Callable[[ProgressReport], None] | None,
        interval: float = 0.2,
    ) -> None:
        self.total = total
        self.acknowledged = acknowledged
        self.callback = callback
        self.interval = interval
        self.sent = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last = 0.0
        self._window: list[tuple[float, int]] = []

    def count(self, n: int) -> None:
        with self._lock:
            self.sent += n
        self.report()

    def report(self, *, force: bool = False) -> ProgressReport:
        now = time.monotonic()
        acknowledged = self.acknowledged()
        with self._lock:
            self._window.append((now, acknowledged))
            while len(self._window) > 2 and now - self._window[0][0] > 5.0:
                self._window.pop(0)
            first_time, first_bytes = self._window[0]
            span = now - first_time
            rate = (acknowledged - first_bytes) / span if span > 0 else 0.0
            report = ProgressReport(self.total, acknowledged, self.sent, rate, now - self.started)
            due = force or now - self._last >= self.interval
            if due:
                self._last = now
        if due and self.callback is not None:
            self.callback(report)
        return report


class Source:
    """The file being uploaded, read by position (safe from several threads at once)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size

    def read(self, body: Slice) -> bytes:
        chunks = []
        position, remaining = body.start, body.length
        while remaining:
            data = os.pread(self.fd, min(remaining, 64 * PIECE), position)
            if not data:
                raise OSError(f"{self.path} ended at {position} (it shrank during the upload)")
            chunks.append(data)
            position += len(data)
            remaining -= len(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def sha256(self) -> str:
        digest = hashlib.sha256()
        position = 0
        while True:
            data = os.pread(self.fd, 8 * PIECE, position)
            if not data:
                return digest.hexdigest()
            digest.update(data)
            position += len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def checksum(algorithm: str, data: bytes) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return f"{algorithm} {base64.b64encode(hasher.digest()).decode('ascii')}"


Body = tuple[bytes, str | None]  # the bytes of a slice, and their Upload-Checksum value


class Reader:
    """Reads request bodies, one ahead: while a chunk is on the wire, the next one (the
    same size, right after it) is read and checksummed on a worker thread, so the next
    request starts as soon as the server answers. A guess that turns out wrong (after a
    failure, at the end of a part) only costs a read."""

    def __init__(self, source: Source, pool: Executor, flows: int = 1) -> None:
        self.source = source
        self.pool = pool
        self.limit = flows  # read-aheads kept: one per flow (parallel parts share a reader)
        self._ahead: OrderedDict[Slice, Future[Body]] = OrderedDict()
        self._lock = threading.Lock()

    def _load(self, body: Slice) -> Body:
        data = self.source.read(body)
        return data, checksum(body.checksum, data) if body.checksum is not None else None

    def take(self, body: Slice) -> Future[Body]:
        """The body's bytes (from the read-ahead when it guessed right); also starts
        reading the slice after it."""
        with self._lock:
            future = self._ahead.pop(body, None)
            end = body.start + body.length
            following = Slice(end, min(body.length, self.source.size - end), body.checksum)
            if following.length > 0 and following not in self._ahead:
                self._ahead[following] = self.pool.submit(self._load, following)
            while len(self._ahead) > self.limit:
                _, oldest = self._ahead.popitem(last=False)  # a guess events overtook
                oldest.cancel()
        if future is None:
            future = Future()
            future.set_result(self._load(body))
        return future


def prepare(request: Request, body: Body | None) -> list[tuple[str, str]]:
    """The request's headers, with the body's length and checksum."""
    headers = list(request.headers)
    if body is None:
        return headers
    data, digest = body
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    headers.append(("Content-Length", str(len(data))))
    if digest is not None:
        headers.append(("Upload-Checksum", digest))
    return headers


def pieces(data: bytes, meter: Meter | None) -> Iterator[bytes]:
    """The body in pieces (views, not copies), each counted once the socket took it."""
    view = memoryview(data)
    for start in range(0, len(view), PIECE):
        piece = view[start : start + PIECE]
        yield piece  # type: ignore[misc]  # h11 and the socket take any buffer
        if meter is not None:
            meter.count(len(piece))


def to_reply(response: httpx.Response) -> Reply:
    headers = {k.lower(): v for k, v in response.headers.items()}
    text = ""
    if response.status_code >= 400:
        text = response.content[:ERROR_TEXT].decode("utf-8", "replace")
    return Reply(response.status_code, headers, text)


def network_failure(exc: Exception) -> NetworkFailure:
    return NetworkFailure(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


NETWORK_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError,)


def timeouts(seconds: float) -> httpx.Timeout:
    # A stalled transfer fails after ``seconds`` without progress, whatever the file size.
    return httpx.Timeout(seconds, connect=min(seconds, 15.0))
