"""Reference ceiling: the least a Python ASGI server can do per tus request.

A bare ASGI app on uvicorn (uvloop + httptools) that speaks just enough
tus 1.0 for bench/client.py: POST creates an empty file and answers 201
with a relative Location, PATCH appends the body to that file and answers
204 with Upload-Offset, HEAD reports the offset. No persistence of state,
no fsync, no locking, no validation beyond the offset check: whatever
tether spends above this is the price of its features.

Usage: python bench/bare_app.py --port PORT --data DIR
Upload ``/files/<id>`` is stored as ``DIR/<id>``.
"""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/files/"
TUS = (b"tus-resumable", b"1.0.0")


@dataclass
class Upload:
    length: int
    offset: int
    fd: int  # kept open (O_APPEND) while incomplete: one open() per upload, not per PATCH


class BareTus:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.uploads: dict[str, Upload] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if method == "POST" and path.rstrip("/") == PREFIX.rstrip("/"):
            await self._drain(receive)
            await self._create(headers, send)
            return
        upload_id = path[len(PREFIX) :] if path.startswith(PREFIX) else ""
        upload = self.uploads.get(upload_id)
        if upload is None:
            await self._drain(receive)
            await _respond(send, 404)
        elif method == "PATCH":
            await self._patch(upload, headers, receive, send)
        elif method == "HEAD":
            await _respond(
                send,
                200,
                [
                    (b"upload-offset", b"%d" % upload.offset),
                    (b"upload-length", b"%d" % upload.length),
                    (b"cache-control", b"no-store"),
                ],
            )
        else:
            await self._drain(receive)
            await _respond(send, 405)

    async def _create(self, headers: dict[str, str], send: Send) -> None:
        length = int(headers.get("upload-length", "-1"))
        if length < 0:
            await _respond(send, 400)
            return
        upload_id = uuid.uuid4().hex
        fd = os.open(self.data_dir / upload_id, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.uploads[upload_id] = Upload(length, 0, fd)
        await _respond(send, 201, [(b"location", (PREFIX + upload_id).encode())])

    async def _patch(
        self, upload: Upload, headers: dict[str, str], receive: Receive, send: Send
    ) -> None:
        if int(headers.get("upload-offset", "-1")) != upload.offset:
            await self._drain(receive)
            await _respond(send, 409, [(b"upload-offset", b"%d" % upload.offset)])
            return
        more = True
        while more:
            message = await receive()
            body: bytes = message.get("body", b"")
            if body:
                # A blocking write to the page cache is the cheapest way to
                # land the bytes; offloading to a thread would cost more.
                _write_all(upload.fd, body)
                upload.offset += len(body)
            more = message.get("more_body", False)
        if upload.offset >= upload.length:
            os.close(upload.fd)
            upload.fd = -1
        await _respond(send, 204, [(b"upload-offset", b"%d" % upload.offset)])

    @staticmethod
    async def _drain(receive: Receive) -> None:
        more = True
        while more:
            more = (await receive()).get("more_body", False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    out = [TUS, *(headers or [])]
    if status != 204:
        out.append((b"content-length", b"0"))
    await send({"type": "http.response.start", "status": status, "headers": out})
    await send({"type": "http.response.body", "body": b""})


def main() -> None:
    p = argparse.ArgumentParser(description="bare tus-ish append server (benchmark ceiling)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--data", type=Path, required=True)
    args = p.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    uvicorn.run(
        BareTus(args.data),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
