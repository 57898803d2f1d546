"""uvicorn's httptools protocol, adjusted for upload bodies and interim responses.

Four changes, all confined to how one request's body and interim responses move between
the socket and the app:

- **Fewer copies of every body byte.** Stock uvicorn appends each parsed body piece to a
  ``bytearray`` and hands the app ``bytes(bytearray)``: two copies of every byte on top of
  the parser's own. Here the parser's ``bytes`` objects are handed to the app as they are,
  one per ``receive()``, and up to 256 KiB of them may wait before the socket is paused,
  so the app rarely waits on the event loop between pieces. Memory per request stays
  bounded by that high-water mark.
- **Interim responses.** ASGI has no message for an arbitrary 1xx (its only one, early
  hints, sends 103 with ``Link``), and uvicorn sends none but ``100 Continue``. The app may
  send ``{"type": "tether.http.informational", "status": 104, "headers": [...]}`` before
  its response starts; the scope's ``extensions`` name ``tether.informational`` when it can.
- **Bodies moved by the kernel.** A body with a ``Content-Length`` of at least
  ``SPLICE_MIN`` may be moved from the socket into a file with ``splice(2)`` through a pipe,
  never entering user space: the scope's ``extensions`` carry ``tether.splice`` with a
  ``move_into(fd, count)`` coroutine. It hands over what the parser already buffered first,
  then stops the transport reading and splices the rest; once the body is through, the
  connection gets a fresh parser (the old one still counts the bytes it never saw). The
  rest of a body the app abandoned (takeover, full disk) is spliced into ``/dev/null``
  after the response, as uvicorn discards unread bodies, so the client reads its answer
  and may reuse the connection.
- **Reads sized by what comes next.** The protocol is fed through a buffered protocol
  (``protocol_factory``), so it chooses each read's size: ``HEAD_READ`` bytes while a
  request's headers are awaited, so that little of a body to be spliced passes through
  user space, and ``BODY_READ`` once a body is read through the parser.

All rely on uvicorn internals (``_start_asgi_task``, the cycle's fields, ``parser``);
``supported()`` says whether they are there, and ``server.run`` falls back to stock httptools
if not.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import os
import re
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

EXTENSION = "tether.informational"
MESSAGE = "tether.http.informational"
SPLICE = "tether.splice"

# Body bytes buffered per request before the socket is paused.
BODY_HIGH_WATER = 256 * 1024
# Bodies shorter than this go through the parser: a pipe round trip costs more than a copy.
SPLICE_MIN = 128 * 1024
# Bytes one splice moves at most: the pipe's size (1 MiB is Linux's default cap for it).
PIPE_SIZE = 1024 * 1024
# Read sizes: while headers are awaited (a tus request's are a few hundred bytes), and
# while a body goes through the parser.
HEAD_READ = 16 * 1024
BODY_READ = 256 * 1024
_CAN_SPLICE = hasattr(os, "splice") and hasattr(fcntl, "F_SETPIPE_SZ")
_SPLICE_FILES = True  # until a file system refuses splice (see _Splicer.move)

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VALUE = re.compile(rb"[\t\x20-\x7e]*")
_REASONS = {104: b"Upload Resumption Supported"}


def encode_interim(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    if not 100 <= status < 200 or status == 101:
        raise ValueError(f"{status} is not an interim status")
    lines = [b"HTTP/1.1 %d %s" % (status, _REASONS.get(status, b""))]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            raise ValueError(f"invalid interim header {name!r}")
        lines.append(name + b": " + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Body:
    """A request's buffered body pieces, in the place of uvicorn's ``bytearray``."""

    __slots__ = ("pieces", "size", "unparsed")

    def __init__(self, length: int | None = None) -> None:
        self.pieces: collections.deque[bytes] = collections.deque()
        self.size = 0
        # Bytes of a Content-Length body the parser has not seen (None: no Content-Length).
        self.unparsed = length

    def write_into(self, fd: int, count: int) -> int:
        """Write up to ``count`` buffered bytes to ``fd``; OSErrors are the file's."""
        pieces = self.pieces
        moved = 0
        while pieces and moved < count:
            piece = pieces[0]
            take = min(len(piece), count - moved)
            moved += _write_all(fd, memoryview(piece)[:take])
            if take == len(piece):
                pieces.popleft()
            else:
                pieces[0] = piece[take:]
        self.size -= moved
        return moved

    def take(self) -> bytes:
        pieces = self.pieces
        if len(pieces) == 1:
            self.size = 0
            return pieces.popleft()
        # Several pieces waiting (the loop was busy, e.g. with many uploads at once): one
        # copy into a single chunk costs less than a trip through the app per piece.
        data = b"".join(pieces)
        pieces.clear()
        self.size = 0
        return data


class _Splicer:
    """The way of one request body from its socket into files, through the process's pipe.

    It reads and waits on its own duplicate of the socket's descriptor, open until
    ``close()``: the event loop refuses to watch a descriptor its transport owns, and the
    transport's may be closed (and its number reused) while a request still runs. Every
    ``move`` leaves the pipe empty, so one pipe serves every connection."""

    __slots__ = ("_loop", "_waiter", "sock")

    def __init__(self, sock: int, loop: asyncio.AbstractEventLoop) -> None:
        _pipe()  # fail here, before the socket is taken over, if there can be no pipe
        self._loop = loop
        self._waiter: asyncio.Future[None] | None = None
        self.sock = os.dup(sock)

    def move(self, fd: int, count: int) -> int:
        """Move up to ``count`` bytes from the socket into ``fd``: 0 at end of stream,
        BlockingIOError when none have arrived. A failure to write ``fd`` raises
        ``_FileError`` saying how many bytes left the socket."""
        if self.sock < 0:
            raise ConnectionResetError("connection closed")
        pipe_r, pipe_w, capacity = _pipe()
        n = os.splice(
            self.sock, pipe_w, min(count, capacity), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        )
        done = 0
        try:
            while done < n:
                try:
                    moved = os.splice(pipe_r, fd, n - done, flags=os.SPLICE_F_MOVE)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    # This file system takes no splice: copy through user space, and
                    # offer no more splicing in this process.
                    global _SPLICE_FILES
                    _SPLICE_FILES = False
                    moved = _write_all(fd, os.read(pipe_r, n - done))
                if moved == 0:
                    raise OSError(errno.EIO, "splice into the file moved nothing")
                done += moved
        except OSError as exc:
            _empty_pipe(n - done)
            raise _FileError(exc, n) from exc
        return n

    async def readable(self) -> None:
        if self.sock < 0:
            raise ConnectionResetError("connection closed")
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._loop.add_reader(self.sock, _wake, waiter)
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None
                self._loop.remove_reader(self.sock)

    def close(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            self._loop.remove_reader(self.sock)
            if not waiter.done():
                waiter.set_exception(ConnectionResetError("connection closed"))
        if self.sock >= 0:
            with contextlib.suppress(OSError):
                os.close(self.sock)
            self.sock = -1


class _FileError(Exception):
    """Writing the destination file failed after ``consumed`` bytes left the socket."""

    def __init__(self, error: OSError, consumed: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.consumed = consumed


_PIPE: tuple[int, int, int] | None = None  # read end, write end, capacity
_DEVNULL = -1


def _pipe() -> tuple[int, int, int]:
    global _PIPE
    if _PIPE is None:
        pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        _PIPE = (pipe_r, pipe_w, fcntl.fcntl(pipe_w, fcntl.F_GETPIPE_SZ))
    return _PIPE


def _empty_pipe(count: int) -> None:
    """Drop ``count`` bytes a failed move left in the pipe; a pipe that cannot be emptied
    is replaced."""
    global _PIPE
    try:
        while count > 0:
            moved = os.splice(_pipe()[0], _devnull(), count, flags=os.SPLICE_F_MOVE)
            if moved == 0:
                raise OSError(errno.EIO, "pipe ended early")
            count -= moved
    except OSError:
        if _PIPE is not None:
            for fd in _PIPE[:2]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            _PIPE = None


def _devnull() -> int:
    global _DEVNULL
    if _DEVNULL < 0:
        _DEVNULL = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return _DEVNULL


def _write_all(fd: int, data: bytes | memoryview) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    length = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
    return length


class TetherHttpToolsProtocol(HttpToolsProtocol):
    # The socket of the body being spliced (the socket is read by splice, not by the
    # transport, until the body's end); None otherwise.
    _splicer: _Splicer | None = None
    _discarding: asyncio.Task[None] | None = None
    read_size = HEAD_READ

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.read_size = HEAD_READ

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # A pipelined request's cycle exists before its task starts: give it a buffer now.
        cycle: Any = self.cycle
        if cycle is not None and not hasattr(cycle, "tether_body"):
            cycle.tether_body = _Body(_content_length(self.headers))

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._splicer is not None:
            self._splicer.close()
            self._splicer = None

    def on_response_complete(self) -> None:
        cycle: Any = self.cycle
        buffered: _Body | None = getattr(cycle, "tether_body", None)
        if buffered is not None and self._splicer is not None and not self.transport.is_closing():
            # The app answered before the body's end, which is still in the socket.
            self._discarding = self.loop.create_task(self._discard_rest(cycle, buffered))
            return
        super().on_response_complete()

    async def _discard_rest(self, cycle: Any, buffered: _Body) -> None:
        splicer = self._splicer
        left = buffered.unparsed or 0
        try:
            while left and splicer is not None and not self.transport.is_closing():
                try:
                    n = splicer.move(_devnull(), left)
                except BlockingIOError:
                    # As long as the client keeps sending, however slowly, as uvicorn
                    # does; a client silent for the keep-alive timeout is let go.
                    async with asyncio.timeout(self.timeout_keep_alive):
                        await splicer.readable()
                    continue
                if n == 0:
                    break
                left -= n
        except (OSError, _FileError, TimeoutError):
            pass
        if left or self.transport.is_closing():
            self.transport.close()
            return
        buffered.unparsed = 0
        self._end_spliced_body(cycle, buffered)
        super().on_response_complete()

    def _take_socket(self) -> _Splicer | None:
        """The splicer for this body, or None if splicing is not possible now (out of
        descriptors, say): the body then goes through the parser."""
        if self._splicer is None:
            try:
                sock = self.transport.get_extra_info("socket")
                self._splicer = _Splicer(sock.fileno(), self.loop)
            except OSError:
                return None
        return self._splicer

    def _end_spliced_body(self, cycle: Any, buffered: _Body) -> None:
        # The old parser still expects the bytes it never saw: the next request on this
        # connection starts on a new one, as after any complete message.
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        cycle.more_body = False
        self.read_size = HEAD_READ
        if self._splicer is not None:
            self._splicer.close()
            self._splicer = None

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        buffered: _Body = cycle.tether_body
        buffered.pieces.append(body)
        buffered.size += len(body)
        if buffered.unparsed is not None:
            buffered.unparsed -= len(body)
        if buffered.size > BODY_HIGH_WATER:
            self.flow.pause_reading()
        cycle.message_event.set()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        original_send = cycle.send
        transport = self.transport
        flow = self.flow
        if not hasattr(cycle, "tether_body"):
            cycle.tether_body = _Body(_content_length(self.headers))

        async def send(message: Any) -> None:
            if message["type"] != MESSAGE:
                await original_send(message)
                return
            if cycle.response_started or cycle.disconnected or transport.is_closing():
                return
            transport.write(encode_interim(message["status"], list(message.get("headers", []))))

        def continue_if_expected() -> None:
            if cycle.waiting_for_100_continue and not transport.is_closing():
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                cycle.waiting_for_100_continue = False

        async def receive() -> Any:
            continue_if_expected()
            buffered: _Body = cycle.tether_body
            if self._splicer is not None:
                raise RuntimeError("receive() while the body is being spliced")
            if not buffered.pieces and not cycle.disconnected and not cycle.response_complete:
                self.read_size = BODY_READ
                flow.resume_reading()
                await cycle.message_event.wait()
            cycle.message_event.clear()
            if buffered.pieces:
                # Bytes that arrived before a disconnect are delivered first: the engine
                # commits them, and the next receive reports the disconnect.
                data = buffered.take()
                if not buffered.pieces and flow.read_paused and not cycle.disconnected:
                    flow.resume_reading()
                more = bool(buffered.pieces) or cycle.more_body or cycle.disconnected
                return {"type": "http.request", "body": data, "more_body": more}
            if cycle.disconnected or cycle.response_complete:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": b"", "more_body": cycle.more_body}

        async def move_into(fd: int, count: int) -> int:
            """Move up to ``count`` body bytes into ``fd`` at its position: what the parser
            buffered, then straight from the socket. 0 at the end of the body. OSErrors are
            the file's; a client that went away raises ConnectionError."""
            continue_if_expected()
            buffered: _Body = cycle.tether_body
            while True:
                if buffered.pieces:
                    return buffered.write_into(fd, count)
                left = buffered.unparsed
                if not left or cycle.response_complete:
                    return 0
                if cycle.disconnected or self.transport.is_closing():
                    raise ConnectionResetError("client disconnected mid-body")
                if self._splicer is not None:
                    break
                if left >= SPLICE_MIN and self._take_socket() is not None:
                    # From here until the body's end the socket is read by splice only.
                    flow.pause_reading()
                    break
                # A short rest (most of the body came with the headers) is not worth a
                # pipe; nor is any when none can be had.
                self.read_size = BODY_READ
                flow.resume_reading()
                await cycle.message_event.wait()
                cycle.message_event.clear()
            splicer = self._splicer
            assert splicer is not None
            while True:
                try:
                    n = splicer.move(fd, min(count, left))
                except BlockingIOError:
                    await splicer.readable()
                    if cycle.disconnected or self.transport.is_closing():
                        raise ConnectionResetError("client disconnected mid-body") from None
                    continue
                except _FileError as exc:
                    buffered.unparsed = left - exc.consumed
                    if not buffered.unparsed:
                        self._end_spliced_body(cycle, buffered)
                    raise exc.error from None
                except OSError as exc:
                    self.transport.close()
                    raise ConnectionResetError(f"client connection failed: {exc}") from exc
                if n == 0:
                    self.transport.close()
                    raise ConnectionResetError("client disconnected mid-body")
                left -= n
                buffered.unparsed = left
                if not left:
                    self._end_spliced_body(cycle, buffered)
                return n

        cycle.send = send
        cycle.receive = receive
        extensions = cycle.scope.setdefault("extensions", {})
        extensions[EXTENSION] = {}
        length = cycle.tether_body.unparsed
        if (
            _CAN_SPLICE
            and _SPLICE_FILES
            and length is not None
            and length >= SPLICE_MIN
            and self.scheme == "http"  # TLS bytes must be decrypted in user space
        ):
            extensions[SPLICE] = {"move_into": move_into}
            # Read no further than the buffer that held the headers: the body's rest is
            # the kernel's to move (nothing changes for an app that reads by receive()).
            flow.pause_reading()
        else:
            self.read_size = BODY_READ
        super()._start_asgi_task(cycle, app)


# One read buffer for every connection, as uvloop has for plain protocols: each read is
# parsed (and whatever is kept, copied) before the loop starts another.
_READ_BUFFER = memoryview(bytearray(BODY_READ))


class _SizedReads(asyncio.BufferedProtocol):
    """Hands the HTTP protocol reads of the size it asks for (``read_size``)."""

    __slots__ = ("_http",)

    def __init__(self, http: TetherHttpToolsProtocol) -> None:
        self._http = http

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._http.connection_made(transport)  # type: ignore[arg-type]

    def get_buffer(self, sizehint: int) -> memoryview:
        return _READ_BUFFER[: self._http.read_size]

    def buffer_updated(self, nbytes: int) -> None:
        self._http.data_received(_READ_BUFFER[:nbytes])  # type: ignore[arg-type]

    def eof_received(self) -> None:
        self._http.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._http.connection_lost(exc)

    def pause_writing(self) -> None:
        self._http.pause_writing()

    def resume_writing(self) -> None:
        self._http.resume_writing()


def protocol_factory(*args: Any, **kwargs: Any) -> asyncio.BaseProtocol:
    """What uvicorn calls for each connection (its ``http`` setting)."""
    return _SizedReads(TetherHttpToolsProtocol(*args, **kwargs))


def supported() -> bool:
    return hasattr(HttpToolsProtocol, "_start_asgi_task") and hasattr(HttpToolsProtocol, "on_body")
