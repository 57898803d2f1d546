"""Informational (1xx) responses on uvicorn, for the IETF draft's ``104``.

ASGI has no message for an arbitrary interim response (its only one, early hints, sends
103 with ``Link``), and uvicorn sends none but ``100 Continue``. This protocol subclass adds
an ASGI extension, ``tether.informational``: the app may send
``{"type": "tether.http.informational", "status": 104, "headers": [...]}`` before its
response starts, and the bytes go straight to the transport. On a uvicorn without the hook
this relies on, the extension is simply absent and the app sends no 104.
"""

from __future__ import annotations

import re
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

EXTENSION = "tether.informational"
MESSAGE = "tether.http.informational"

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


class InterimHttpToolsProtocol(HttpToolsProtocol):
    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        original_send = cycle.send
        transport = self.transport

        async def send(message: Any) -> None:
            if message["type"] != MESSAGE:
                await original_send(message)
                return
            if cycle.response_started or cycle.disconnected or transport.is_closing():
                return
            transport.write(encode_interim(message["status"], list(message.get("headers", []))))

        cycle.send = send
        cycle.scope.setdefault("extensions", {})[EXTENSION] = {}
        super()._start_asgi_task(cycle, app)


def supported() -> bool:
    return hasattr(HttpToolsProtocol, "_start_asgi_task")
