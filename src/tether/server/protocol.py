"""uvicorn's httptools protocol, adjusted for upload bodies and interim responses.

Two changes, both confined to how one request's body and interim responses move between
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

Both rely on uvicorn internals (``_start_asgi_task``, the cycle's fields); ``supported()``
says whether they are there, and ``server.run`` falls back to stock httptools if not.
"""

from __future__ import annotations

import collections
import re
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

EXTENSION = "tether.informational"
MESSAGE = "tether.http.informational"

# Body bytes buffered per request before the socket is paused.
BODY_HIGH_WATER = 256 * 1024

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

    __slots__ = ("pieces", "size")

    def __init__(self) -> None:
        self.pieces: collections.deque[bytes] = collections.deque()
        self.size = 0

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


class TetherHttpToolsProtocol(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        # A pipelined request's cycle exists before its task starts: give it a buffer now.
        cycle: Any = self.cycle
        if cycle is not None and not hasattr(cycle, "tether_body"):
            cycle.tether_body = _Body()

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
            return
        buffered: _Body = cycle.tether_body
        buffered.pieces.append(body)
        buffered.size += len(body)
        if buffered.size > BODY_HIGH_WATER:
            self.flow.pause_reading()
        cycle.message_event.set()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        original_send = cycle.send
        transport = self.transport
        flow = self.flow
        if not hasattr(cycle, "tether_body"):
            cycle.tether_body = _Body()

        async def send(message: Any) -> None:
            if message["type"] != MESSAGE:
                await original_send(message)
                return
            if cycle.response_started or cycle.disconnected or transport.is_closing():
                return
            transport.write(encode_interim(message["status"], list(message.get("headers", []))))

        async def receive() -> Any:
            if cycle.waiting_for_100_continue and not transport.is_closing():
                transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                cycle.waiting_for_100_continue = False
            buffered: _Body = cycle.tether_body
            if not buffered.pieces and not cycle.disconnected and not cycle.response_complete:
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

        cycle.send = send
        cycle.receive = receive
        cycle.scope.setdefault("extensions", {})[EXTENSION] = {}
        super()._start_asgi_task(cycle, app)


def supported() -> bool:
    return hasattr(HttpToolsProtocol, "_start_asgi_task") and hasattr(HttpToolsProtocol, "on_body")
