"""When the IETF draft's 104 is left out: for HTTP/1.0 clients (RFC 9110 15.2), and through
a proxy that says it cannot forward interim responses (``Tether-No-Interim``, which
``tether lb nginx`` sets). Everything else about the request is unchanged."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import pytest

from tether.engine import EngineConfig, UploadService
from tether.server.app import TetherApp
from tether.server.config import ServerConfig
from tether.server.protocol import EXTENSION, MESSAGE
from tether.state.memory import MemoryStateStore
from tether.storage.memory import MemoryByteStore

IETF = [(b"upload-draft-interop-version", b"6"), (b"upload-complete", b"?1")]


async def create(
    http_version: str, extra: list[tuple[bytes, bytes]]
) -> list[MutableMapping[str, Any]]:
    """Send an IETF creation with a 3-byte body; every message the app sent, in order."""
    app = TetherApp(
        ServerConfig(node_id="t", access_log=False),
        UploadService(MemoryStateStore(), MemoryByteStore(), EngineConfig(node_id="t")),
    )
    scope = {
        "type": "http",
        "http_version": http_version,
        "method": "POST",
        "path": "/files/",
        "scheme": "http",
        "server": ("node", 1080),
        "client": ("127.0.0.1", 5000),
        "headers": [(b"host", b"lb"), (b"content-length", b"3"), *IETF, *extra],
        "extensions": {EXTENSION: {}},
    }
    sent: list[MutableMapping[str, Any]] = []
    body = [{"type": "http.request", "body": b"abc", "more_body": False}]

    async def receive() -> dict[str, Any]:
        return body.pop(0) if body else {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def statuses(sent: list[MutableMapping[str, Any]]) -> list[int]:
    return [m["status"] for m in sent if m["type"] in (MESSAGE, "http.response.start")]


async def test_104_by_default() -> None:
    assert statuses(await create("1.1", [])) == [104, 201]


@pytest.mark.parametrize(
    ("version", "extra"),
    [("1.0", []), ("1.1", [(b"tether-no-interim", b"1")]), ("2", [(b"tether-no-interim", b"")])],
)
async def test_no_104(version: str, extra: list[tuple[bytes, bytes]]) -> None:
    sent = await create(version, extra)
    assert statuses(sent) == [201]
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert any(name == b"location" for name, _ in start["headers"])
