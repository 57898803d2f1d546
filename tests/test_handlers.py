"""In-process handler tests: the ASGI app driven directly, no sockets.

Most tests go through ``httpx.ASGITransport``; those that need to cut a body, hang it, or
send a path or header httpx would normalise use ``asgi_call``. Every test runs against
the memory stores and against SQLite + the filesystem. Every response any test sees is
checked by ``check_response``: never a 5xx, and every error is a 4xx with a one-line reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import crc32c
import httpx
import pytest

from tether.engine import EngineConfig, UploadService
from tether.protocol.ietf import PROBLEM_BASE
from tether.server.app import TetherApp
from tether.server.config import ServerConfig
from tether.server.protocol import EXTENSION as INTERIM_EXTENSION
from tether.server.protocol import MESSAGE as INTERIM_MESSAGE
from tether.state.memory import MemoryStateStore
from tether.state.sqlite import SqliteStateStore
from tether.storage.base import ByteStore
from tether.storage.filesystem import FilesystemByteStore
from tether.storage.memory import MemoryByteStore

NOW = 1_800_000_000.0
BASE = "/files/"
TUS = {"Tus-Resumable": "1.0.0"}
OCTET = "application/offset+octet-stream"
PARTIAL = "application/partial-upload"


# -- harness -----------------------------------------------------------------------------


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def check_body(status: int, headers: httpx.Headers | dict[str, str], body: bytes) -> None:
    """An error response is a 4xx whose body is one line: text, or problem+json."""
    assert status < 500, f"{status}: {body!r}"
    if status < 400:
        return
    content_type = headers.get("content-type", "")
    if content_type == "application/problem+json":
        assert b"\n" not in body
        problem = json.loads(body)
        assert problem["type"].startswith(PROBLEM_BASE)
        assert problem["title"]
    else:
        assert content_type.startswith("text/plain"), content_type
        assert body.endswith(b"\n") and body.count(b"\n") == 1 and len(body) > 1, body


async def check_response(response: httpx.Response) -> None:
    await response.aread()
    if response.request.method == "HEAD":
        assert response.status_code < 500, response.status_code
        return
    check_body(response.status_code, response.headers, response.content)


@dataclass
class Server:
    app: TetherApp
    service: UploadService
    storage: ByteStore
    clock: Clock
    client: httpx.AsyncClient
    backend: str
    root: Path

    def bytes_on_disk(self, upload_id: str) -> bool:
        """Whether the byte store holds anything for ``upload_id``."""
        if isinstance(self.storage, MemoryByteStore):
            return any(key[0] == upload_id for key in self.storage.objects)
        assert isinstance(self.storage, FilesystemByteStore)
        directory = self.storage.root / upload_id
        return directory.exists() and any(directory.iterdir())


def open_stores(backend: str, root: Path) -> tuple[Any, ByteStore]:
    if backend == "memory":
        return MemoryStateStore(), MemoryByteStore()
    root.mkdir(parents=True, exist_ok=True)
    return SqliteStateStore(str(root / "state.db")), FilesystemByteStore(root / "uploads")


@contextlib.asynccontextmanager
async def serve(
    backend: str,
    root: Path,
    *,
    max_size: int | None = None,
    expire_after: float | None = 3600.0,
    **config: Any,
) -> AsyncIterator[Server]:
    clock = Clock()
    state, storage = open_stores(backend, root)
    service = UploadService(
        state,
        storage,
        EngineConfig(node_id="t", max_size=max_size, expire_after=expire_after),
        clock=clock,
    )
    app = TetherApp(
        ServerConfig(
            node_id="t",
            max_size=max_size,
            expire_after=expire_after,
            access_log=False,
            **config,
        ),
        service,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://test",
        event_hooks={"response": [check_response]},
    ) as client:
        try:
            yield Server(app, service, storage, clock, client, backend, root)
        finally:
            await app.shutdown()


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


MakeServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def make_server(backend: str, tmp_path: Path) -> AsyncIterator[MakeServer]:
    counter = itertools.count()
    async with contextlib.AsyncExitStack() as stack:

        async def make(**config: Any) -> Server:
            root = tmp_path / f"server{next(counter)}"
            return await stack.enter_async_context(serve(backend, root, **config))

        yield make


@pytest.fixture
async def server(make_server: MakeServer) -> Server:
    return await make_server()


# -- raw ASGI calls ----------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    interim: list[tuple[int, list[tuple[str, str]]]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        assert len(values) <= 1, values
        return values[0] if values else None


class RawRequest:
    """One request fed to the app by hand: body chunks, then the end, a disconnect, a hang
    until ``release()`` (then a disconnect), or a pause until ``release()`` (then the
    ``after`` chunks and the end)."""

    def __init__(
        self,
        app: TetherApp,
        method: str,
        path: str,
        headers: Iterable[tuple[str | bytes, str | bytes]] = (),
        chunks: Sequence[bytes] = (),
        *,
        then: str = "end",
        after: Sequence[bytes] = (),
        interim: bool = False,
    ) -> None:
        assert then in ("end", "disconnect", "hang", "pause")
        self.app = app
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("latin-1", "replace"),
            "query_string": b"",
            "root_path": "",
            "headers": [(_b(k).lower(), _b(v)) for k, v in headers],
            "client": ("10.0.0.1", 5000),
            "server": ("test", 80),
        }
        if interim:
            self.scope["extensions"] = {INTERIM_EXTENSION: {}}
        self._chunks = list(chunks)
        self._then = then
        self._after = list(after)
        self._ended = False
        self._done = asyncio.Event()
        self._release = asyncio.Event()
        self.hanging = asyncio.Event()
        self.consumed = 0
        self._status: int | None = None
        self._headers: list[tuple[str, str]] = []
        self._body = bytearray()
        self._interim: list[tuple[int, list[tuple[str, str]]]] = []

    async def _receive(self) -> dict[str, Any]:
        if self._chunks:
            chunk = self._chunks.pop(0)
            self.consumed += len(chunk)
            more = bool(self._chunks) or self._then != "end"
            self._ended = not more
            return {"type": "http.request", "body": chunk, "more_body": more}
        if not self._ended and self._then == "end":
            self._ended = True
            return {"type": "http.request", "body": b"", "more_body": False}
        if self._then == "pause":
            # A stall mid-body: after release() the rest arrives and the body ends.
            self.hanging.set()
            await self._release.wait()
            self._chunks, self._then = list(self._after), "end"
            return await self._receive()
        if not self._ended:
            self._ended = True
            if self._then == "hang":
                self.hanging.set()
                await self._release.wait()
            return {"type": "http.disconnect"}
        # After the body, as a server does: disconnect only once the response is out.
        await self._done.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == INTERIM_MESSAGE:
            assert self._status is None, "interim response after the final one started"
            self._interim.append((message["status"], _decode(message["headers"])))
        elif kind == "http.response.start":
            assert self._status is None
            self._status = message["status"]
            self._headers = _decode(message["headers"])
        elif kind == "http.response.body":
            assert self._status is not None
            self._body += message.get("body", b"")
            if not message.get("more_body", False):
                self._done.set()
        else:
            raise AssertionError(f"unexpected ASGI message {kind}")

    def release(self) -> None:
        self._release.set()

    async def run(self, *, check: bool = True) -> RawResponse:
        """Run the app to the end of its response; ``check`` applies ``check_body``."""
        await self.app(self.scope, self._receive, self._send)  # type: ignore[arg-type]
        assert self._status is not None and self._done.is_set()
        response = RawResponse(self._status, self._headers, bytes(self._body), self._interim)
        if not check:
            return response
        if self.scope["method"] != "HEAD":
            check_body(response.status, dict(response.headers), response.body)
        else:
            assert response.status < 500
        return response


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _decode(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in headers]


async def asgi_call(
    app: TetherApp,
    method: str,
    path: str,
    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
    chunks: Sequence[bytes] = (),
    **kw: Any,
) -> RawResponse:
    return await RawRequest(app, method, path, headers, chunks, **kw).run()


# -- client helpers ----------------------------------------------------------------------


def upload_id(location: str) -> str:
    path = httpx.URL(location).path
    assert path.startswith(BASE)
    return path[len(BASE) :]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def tus_create(
    client: httpx.AsyncClient,
    length: int | None,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    status: int = 201,
) -> httpx.Response:
    sent = dict(TUS)
    if length is None:
        sent["Upload-Defer-Length"] = "1"
    else:
        sent["Upload-Length"] = str(length)
    if body is not None:
        sent["Content-Type"] = OCTET
    sent.update(headers or {})
    response = await client.post(BASE, headers=sent, content=body)
    assert response.status_code == status, response.text
    return response


async def tus_patch(
    client: httpx.AsyncClient,
    url: str,
    offset: int,
    data: bytes | AsyncIterator[bytes],
    *,
    headers: dict[str, str] | None = None,
    status: int | None = 204,
) -> httpx.Response:
    sent = {**TUS, "Content-Type": OCTET, "Upload-Offset": str(offset), **(headers or {})}
    response = await client.patch(url, headers=sent, content=data)
    if status is not None:
        assert response.status_code == status, response.text
    return response


async def tus_head(client: httpx.AsyncClient, url: str, status: int = 200) -> httpx.Response:
    response = await client.head(url, headers=TUS)
    assert response.status_code == status
    return response


async def offset_of(client: httpx.AsyncClient, url: str) -> int:
    return int((await tus_head(client, url)).headers["upload-offset"])


async def tus_upload(client: httpx.AsyncClient, data: bytes, chunk: int = 7) -> str:
    location = (await tus_create(client, len(data))).headers["location"]
    for start in range(0, len(data), chunk):
        response = await tus_patch(client, location, start, data[start : start + chunk])
        assert response.headers["upload-offset"] == str(min(start + chunk, len(data)))
    return location


async def download(client: httpx.AsyncClient, url: str) -> bytes:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.content


async def chunked(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


DATA = bytes(range(256)) * 4 + b"tail"  # 1028 bytes


# -- tus core ----------------------------------------------------------------------------


async def test_options(server: Server) -> None:
    response = await server.client.options(BASE)
    assert response.status_code == 204
    assert response.headers["tus-version"] == "1.0.0"
    assert response.headers["tus-resumable"] == "1.0.0"
    extensions = response.headers["tus-extension"].split(",")
    assert {"creation", "termination", "checksum", "concatenation", "expiration"} <= set(extensions)
    assert "sha1" in response.headers["tus-checksum-algorithm"].split(",")
    assert "tus-max-size" not in response.headers


async def test_options_ignores_tus_resumable(server: Server) -> None:
    response = await server.client.options(BASE, headers={"Tus-Resumable": "0.0.1"})
    assert response.status_code == 204


async def test_full_tus_flow(server: Server) -> None:
    client = server.client
    created = await tus_create(client, len(DATA), headers={"Upload-Metadata": "filename YS5iaW4="})
    location = created.headers["location"]
    assert location.startswith("http://test/files/")
    assert "upload-offset" not in created.headers  # no body, no offset
    head = await tus_head(client, location)
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == str(len(DATA))
    assert head.headers["cache-control"] == "no-store"
    assert head.headers["upload-metadata"] == "filename YS5iaW4="
    assert head.headers["tus-resumable"] == "1.0.0"
    offset = 0
    for size in (1, 100, 500, 427):
        response = await tus_patch(client, location, offset, DATA[offset : offset + size])
        offset += size
        assert response.headers["upload-offset"] == str(offset)
        assert response.headers["tus-resumable"] == "1.0.0"
    assert offset == len(DATA)
    head = await tus_head(client, location)
    assert head.headers["upload-offset"] == str(len(DATA))
    assert "upload-expires" not in head.headers  # complete uploads do not expire
    got = await client.get(location)
    assert got.status_code == 200
    assert got.content == DATA
    assert got.headers["content-length"] == str(len(DATA))
    assert got.headers["content-disposition"] == 'attachment; filename="a.bin"'
    ranged = await client.get(location, headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206
    assert ranged.content == DATA[10:20]
    assert ranged.headers["content-range"] == f"bytes 10-19/{len(DATA)}"
    suffix = await client.get(location, headers={"Range": "bytes=-4"})
    assert suffix.status_code == 206
    assert suffix.content == b"tail"
    unsatisfiable = await client.get(location, headers={"Range": f"bytes={len(DATA)}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{len(DATA)}"
    ignored = await client.get(location, headers={"Range": "bytes=0-1,5-6"})
    assert ignored.status_code == 200
    assert ignored.content == DATA


async def test_upload_chunks_of_one_byte(server: Server) -> None:
    data = b"0123456789"
    location = await tus_upload(server.client, data, chunk=1)
    assert await download(server.client, location) == data


async def test_download_of_incomplete_upload_is_4xx(server: Server) -> None:
    location = (await tus_create(server.client, 10)).headers["location"]
    await tus_patch(server.client, location, 0, b"abc")
    response = await server.client.get(location)
    assert 400 <= response.status_code < 500


async def test_head_of_unknown_upload_is_404_without_offset(server: Server) -> None:
    response = await server.client.head(BASE + "0" * 32, headers=TUS)
    assert response.status_code == 404
    assert "upload-offset" not in response.headers
    assert response.headers["tus-resumable"] == "1.0.0"


async def test_missing_tus_resumable_is_412_and_changes_nothing(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    response = await client.patch(
        location,
        headers={"Upload-Offset": "0", "Content-Type": OCTET},
        content=b"abc",
    )
    assert response.status_code == 412
    assert response.headers["tus-version"] == "1.0.0"
    response = await client.post(
        BASE, headers={"Tus-Resumable": "0.2.2", "Upload-Length": "3"}, content=b""
    )
    assert response.status_code == 412
    assert response.headers["tus-version"] == "1.0.0"
    assert "location" not in response.headers
    assert await offset_of(client, location) == 0


async def test_creation_with_upload(server: Server) -> None:
    client = server.client
    created = await tus_create(client, len(DATA), body=DATA[:300])
    assert created.headers["upload-offset"] == "300"
    location = created.headers["location"]
    assert await offset_of(client, location) == 300
    await tus_patch(client, location, 300, DATA[300:])
    assert await download(client, location) == DATA


async def test_creation_with_whole_body_completes(server: Server) -> None:
    created = await tus_create(server.client, 5, body=b"hello")
    assert created.headers["upload-offset"] == "5"
    assert await download(server.client, created.headers["location"]) == b"hello"


async def test_creation_with_body_of_wrong_type_is_415(server: Server) -> None:
    response = await server.client.post(
        BASE,
        headers={**TUS, "Upload-Length": "5", "Content-Type": "text/plain"},
        content=b"hello",
    )
    assert response.status_code == 415


async def test_zero_length_upload_is_complete_at_once(server: Server) -> None:
    location = (await tus_create(server.client, 0)).headers["location"]
    head = await tus_head(server.client, location)
    assert head.headers["upload-offset"] == "0"
    assert head.headers["upload-length"] == "0"
    assert await download(server.client, location) == b""
    empty_range = await server.client.get(location, headers={"Range": "bytes=-5"})
    assert empty_range.status_code == 200
    assert empty_range.content == b""


async def test_deferred_length(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, None)).headers["location"]
    head = await tus_head(client, location)
    assert head.headers["upload-defer-length"] == "1"
    assert "upload-length" not in head.headers
    assert head.headers["upload-offset"] == "0"
    await tus_patch(client, location, 0, b"hello ")
    head = await tus_head(client, location)
    assert head.headers["upload-defer-length"] == "1"
    await tus_patch(client, location, 6, b"wor", headers={"Upload-Length": "11"})
    head = await tus_head(client, location)
    assert head.headers["upload-length"] == "11"
    assert "upload-defer-length" not in head.headers
    # Once set, the length never changes.
    await tus_patch(client, location, 9, b"ld", headers={"Upload-Length": "12"}, status=400)
    assert await offset_of(client, location) == 9
    await tus_patch(client, location, 9, b"ld", headers={"Upload-Length": "11"})
    assert await download(client, location) == b"hello world"


async def test_deferred_length_below_offset_is_400(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, None)).headers["location"]
    await tus_patch(client, location, 0, b"hello")
    await tus_patch(client, location, 5, b"", headers={"Upload-Length": "3"}, status=400)
    head = await tus_head(client, location)
    assert head.headers["upload-defer-length"] == "1"
    assert head.headers["upload-offset"] == "5"


# -- checksum ----------------------------------------------------------------------------


def _digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "crc32c":
        return crc32c.crc32c(data).to_bytes(4, "big")
    return hashlib.new(algorithm, data).digest()


@pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32c"])
async def test_checksum_ok(server: Server, algorithm: str) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    header = f"{algorithm} {b64(_digest(algorithm, b'hello'))}"
    response = await tus_patch(client, location, 0, b"hello", headers={"Upload-Checksum": header})
    assert response.headers["upload-offset"] == "5"
    assert await offset_of(client, location) == 5


async def test_checksum_mismatch_discards_the_chunk(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    await tus_patch(client, location, 0, b"01234")
    wrong = f"sha1 {b64(hashlib.sha1(b'other').digest())}"
    response = await tus_patch(
        client, location, 5, b"56789", headers={"Upload-Checksum": wrong}, status=460
    )
    assert "upload-offset" not in response.headers
    assert await offset_of(client, location) == 5
    right = f"sha1 {b64(hashlib.sha1(b'56789').digest())}"
    await tus_patch(client, location, 5, b"56789", headers={"Upload-Checksum": right})
    assert await download(client, location) == b"0123456789"


async def test_failed_creation_with_upload_still_says_where_the_upload_is(
    server: Server,
) -> None:
    client = server.client
    wrong = f"sha1 {b64(hashlib.sha1(b'other').digest())}"
    response = await tus_create(
        client, 10, body=b"01234", headers={"Upload-Checksum": wrong}, status=460
    )
    location = response.headers["location"]
    assert await offset_of(client, location) == 0
    await tus_patch(client, location, 0, b"0123456789")
    assert await download(client, location) == b"0123456789"


async def test_checksum_mismatch_on_chunked_body(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    wrong = f"md5 {b64(hashlib.md5(b'x').digest())}"
    await tus_patch(
        client,
        location,
        0,
        chunked(b"01", b"234"),
        headers={"Upload-Checksum": wrong},
        status=460,
    )
    assert await offset_of(client, location) == 0
    await tus_patch(client, location, 0, b"0123456789")
    assert await download(client, location) == b"0123456789"


async def test_checksum_unknown_algorithm_is_400(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    header = f"md4 {b64(b'0' * 16)}"
    response = await tus_patch(
        client, location, 0, b"hello", headers={"Upload-Checksum": header}, status=400
    )
    assert "md4" in response.text
    assert await offset_of(client, location) == 0


async def test_checksum_on_creation_with_upload(server: Server) -> None:
    header = f"sha1 {b64(hashlib.sha1(b'abc').digest())}"
    created = await tus_create(server.client, 3, body=b"abc", headers={"Upload-Checksum": header})
    assert await download(server.client, created.headers["location"]) == b"abc"


# -- termination -------------------------------------------------------------------------


async def test_termination(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    await tus_patch(client, location, 0, b"hello")
    response = await client.delete(location, headers=TUS)
    assert response.status_code == 204
    assert response.headers["tus-resumable"] == "1.0.0"
    assert not server.bytes_on_disk(upload_id(location))
    await tus_head(client, location, status=404)
    await tus_patch(client, location, 5, b"world", status=404)
    assert (await client.delete(location, headers=TUS)).status_code == 404
    assert (await client.get(location)).status_code == 404


async def test_termination_of_a_complete_upload(server: Server) -> None:
    location = await tus_upload(server.client, b"done")
    assert (await server.client.delete(location, headers=TUS)).status_code == 204
    assert (await server.client.get(location)).status_code == 404


async def test_termination_stops_an_in_flight_patch(server: Server) -> None:
    location = (await tus_create(server.client, 100)).headers["location"]
    path = httpx.URL(location).path
    patch = RawRequest(
        server.app,
        "PATCH",
        path,
        [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0")],
        [b"x" * 10],
        then="hang",
    )
    task = asyncio.create_task(patch.run())
    await asyncio.wait_for(patch.hanging.wait(), 5)
    assert (await server.client.delete(location, headers=TUS)).status_code == 204
    response = await asyncio.wait_for(task, 5)  # stopped, not left waiting for its body
    assert response.status in (404, 409, 410)
    await tus_head(server.client, location, status=404)


# -- concurrency -------------------------------------------------------------------------


async def test_a_new_patch_takes_over_a_hung_one(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    path = httpx.URL(location).path
    patch_headers = [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0")]
    hung = RawRequest(server.app, "PATCH", path, patch_headers, [b"AAAA"], then="hang")
    task = asyncio.create_task(hung.run())
    await asyncio.wait_for(hung.hanging.wait(), 5)
    # The client gave up on the hung PATCH, which had committed nothing, and resends at 0:
    # the new request wins at once, without waiting for the old one to time out.
    await asyncio.wait_for(tus_patch(client, location, 0, b"0123456789"), 5)
    stale = await asyncio.wait_for(task, 5)
    assert stale.status == 409
    assert await download(client, location) == b"0123456789"


async def test_offset_from_head_is_accepted_by_the_next_append(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    path = httpx.URL(location).path
    patch_headers = [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0")]
    stalled = RawRequest(
        server.app, "PATCH", path, patch_headers, [b"AAAA"], then="pause", after=[b"BB"]
    )
    task = asyncio.create_task(stalled.run())
    await asyncio.wait_for(stalled.hanging.wait(), 5)
    offset = await offset_of(client, location)  # the client gave up on the stalled PATCH
    stalled.release()  # ...but its bytes still trickle in
    await asyncio.wait_for(task, 5)
    # PROTOCOL.md: "an offset the server returned is accepted by the next append".
    await tus_patch(client, location, offset, b"0123456789"[offset:])
    # What the stalled request had sent before the HEAD may be kept, nothing after it.
    assert offset <= 4
    assert await download(client, location) == b"AAAA"[:offset] + b"0123456789"[offset:]


async def test_interrupted_body_keeps_what_was_received(server: Server) -> None:
    location = (await tus_create(server.client, 10)).headers["location"]
    path = httpx.URL(location).path
    response = await asgi_call(
        server.app,
        "PATCH",
        path,
        [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0")],
        [b"012", b"34"],
        then="disconnect",
    )
    assert 400 <= response.status < 500
    assert await offset_of(server.client, location) == 5
    await tus_patch(server.client, location, 5, b"56789")
    assert await download(server.client, location) == b"0123456789"


# -- concatenation -----------------------------------------------------------------------


async def _partial(client: httpx.AsyncClient, data: bytes, *, upload: bool = True) -> str:
    created = await tus_create(
        client, len(data), headers={"Upload-Concat": "partial", "Upload-Metadata": "part"}
    )
    location = created.headers["location"]
    if upload:
        await tus_patch(client, location, 0, data)
    return location


async def _final(client: httpx.AsyncClient, *parts: str, status: int = 201) -> httpx.Response:
    return await client.post(
        BASE,
        headers={
            **TUS,
            "Upload-Concat": "final;" + " ".join(httpx.URL(p).path for p in parts),
            "Upload-Metadata": "whole",
        },
    )


async def test_concatenation(server: Server) -> None:
    client = server.client
    a = await _partial(client, b"hello ")
    b = await _partial(client, b"world")
    head = await tus_head(client, a)
    assert head.headers["upload-concat"] == "partial"
    final = await _final(client, a, b)
    assert final.status_code == 201
    location = final.headers["location"]
    head = await tus_head(client, location)
    assert head.headers["upload-offset"] == "11"
    assert head.headers["upload-length"] == "11"
    assert head.headers["upload-concat"] == f"final;{httpx.URL(a).path} {httpx.URL(b).path}"
    # Partial metadata does not pass to the final upload.
    assert head.headers["upload-metadata"] == "whole"
    assert await download(client, location) == b"hello world"
    # A partial's bytes stay readable on their own.
    assert await download(client, a) == b"hello "


async def test_concatenation_with_absolute_urls(server: Server) -> None:
    client = server.client
    a = await _partial(client, b"ab")
    b = await _partial(client, b"cd")
    final = await client.post(BASE, headers={**TUS, "Upload-Concat": f"final;{a} {b}"})
    assert final.status_code == 201
    assert await download(client, final.headers["location"]) == b"abcd"


async def test_concatenation_unfinished(server: Server) -> None:
    client = server.client
    a = await _partial(client, b"hello ", upload=False)
    b = await _partial(client, b"world")
    await tus_patch(client, a, 0, b"hel")
    final = await _final(client, a, b)
    assert final.status_code == 201
    location = final.headers["location"]
    head = await tus_head(client, location)
    assert "upload-offset" not in head.headers  # not until the partials are complete
    assert head.headers["upload-length"] == "11"
    assert "upload-concat" in head.headers
    response = await tus_patch(client, location, 0, b"x", status=403)
    assert "final" in response.text
    await tus_patch(client, a, 3, b"lo ")
    head = await tus_head(client, location)
    assert head.headers["upload-offset"] == "11"
    assert await download(client, location) == b"hello world"


async def test_concatenation_of_deferred_partials(server: Server) -> None:
    client = server.client
    a = (await tus_create(client, None, headers={"Upload-Concat": "partial"})).headers["location"]
    b = await _partial(client, b"!")
    final = (await _final(client, a, b)).headers["location"]
    head = await tus_head(client, final)
    assert "upload-offset" not in head.headers
    assert "upload-length" not in head.headers
    await tus_patch(client, a, 0, b"hi", headers={"Upload-Length": "2"})
    assert await download(client, final) == b"hi!"


async def test_concatenation_repeating_a_partial(server: Server) -> None:
    client = server.client
    a = await _partial(client, b"ab")
    final = (await _final(client, a, a)).headers["location"]
    assert await download(client, final) == b"abab"


async def test_final_outlives_its_partials(server: Server) -> None:
    client = server.client
    a = await _partial(client, b"ab")
    b = await _partial(client, b"cd")
    final = (await _final(client, a, b)).headers["location"]
    for part in (a, b):
        assert (await client.delete(part, headers=TUS)).status_code == 204
    assert await download(client, final) == b"abcd"


async def test_final_whose_partial_was_terminated_is_gone(server: Server) -> None:
    client = server.client
    a = await _partial(client, b"ab", upload=False)
    b = await _partial(client, b"cd")
    final = (await _final(client, a, b)).headers["location"]
    assert (await client.delete(a, headers=TUS)).status_code == 204
    head = await client.head(final, headers=TUS)
    assert head.status_code in (404, 410)
    assert "upload-offset" not in head.headers
    assert (await client.get(final)).status_code in (404, 409, 410)


async def test_concatenation_of_a_non_partial_is_400(server: Server) -> None:
    client = server.client
    plain = await tus_upload(client, b"abc")
    response = await _final(client, plain)
    assert response.status_code == 400


async def test_concatenation_of_an_unknown_upload_is_400(server: Server) -> None:
    client = server.client
    a = await _partial(client, b"ab")
    response = await _final(client, a, "/files/" + "f" * 32)
    assert response.status_code == 400


async def test_concatenation_of_a_foreign_url_is_400(server: Server) -> None:
    response = await server.client.post(
        BASE, headers={**TUS, "Upload-Concat": "final;/elsewhere/abc"}
    )
    assert response.status_code == 400


# -- expiration --------------------------------------------------------------------------


async def test_expiration(make_server: MakeServer) -> None:
    server = await make_server(expire_after=60.0)
    client = server.client
    created = await tus_create(client, 10)
    location = created.headers["location"]
    expires = parsedate_to_datetime(created.headers["upload-expires"]).timestamp()
    assert expires == NOW + 60
    server.clock.advance(30)
    patched = await tus_patch(client, location, 0, b"hello")
    # Every PATCH renews the expiry and says so.
    assert parsedate_to_datetime(patched.headers["upload-expires"]).timestamp() == NOW + 90
    assert server.bytes_on_disk(upload_id(location))
    server.clock.advance(61)
    await tus_head(client, location, status=410)
    response = await tus_patch(client, location, 5, b"world", status=410)
    assert "upload-offset" not in response.headers
    assert (await client.get(location)).status_code == 410
    assert await server.service.reap_expired() == 1
    assert not server.bytes_on_disk(upload_id(location))
    await tus_head(client, location, status=404)


async def test_complete_uploads_do_not_expire(make_server: MakeServer) -> None:
    server = await make_server(expire_after=60.0)
    location = await tus_upload(server.client, b"kept")
    server.clock.advance(3600)
    assert await server.service.reap_expired() == 0
    assert await download(server.client, location) == b"kept"


async def test_no_expiry_configured(make_server: MakeServer) -> None:
    server = await make_server(expire_after=None)
    created = await tus_create(server.client, 10)
    assert "upload-expires" not in created.headers
    server.clock.advance(10**9)
    await tus_head(server.client, created.headers["location"])


# -- offsets and lengths -----------------------------------------------------------------


@pytest.mark.parametrize("wrong", [0, 3, 6, 100])
async def test_wrong_offset_is_409_and_changes_nothing(server: Server, wrong: int) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    await tus_patch(client, location, 0, b"01234")
    response = await tus_patch(client, location, wrong, b"XXXXX", status=409)
    assert "upload-offset" not in response.headers  # tus 409 has no offset to trust
    assert await offset_of(client, location) == 5
    await tus_patch(client, location, 5, b"56789")
    assert await download(client, location) == b"0123456789"


async def test_body_longer_than_length_is_413_and_nothing_is_kept(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    await tus_patch(client, location, 0, b"01234")
    await tus_patch(client, location, 5, b"56789X", status=413)
    assert await offset_of(client, location) == 5
    await tus_patch(client, location, 5, b"56789")
    assert await download(client, location) == b"0123456789"


async def test_chunked_body_past_length_keeps_nothing_past_it(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 10)).headers["location"]
    await tus_patch(client, location, 0, chunked(b"0123", b"456789", b"EXTRA"), status=413)
    offset = await offset_of(client, location)
    assert offset <= 10
    if offset < 10:
        await tus_patch(client, location, offset, b"0123456789"[offset:])
    assert await download(client, location) == b"0123456789"


async def test_creation_body_longer_than_length_is_413(server: Server) -> None:
    await tus_create(server.client, 3, body=b"abcd", status=413)


async def test_patch_with_body_on_a_complete_upload_is_400(server: Server) -> None:
    client = server.client
    location = await tus_upload(client, b"abc")
    await tus_patch(client, location, 3, b"d", status=400)
    empty = await tus_patch(client, location, 3, b"")
    assert empty.headers["upload-offset"] == "3"
    assert await download(client, location) == b"abc"


async def test_max_size(make_server: MakeServer) -> None:
    server = await make_server(max_size=100)
    client = server.client
    options = await client.options(BASE)
    assert options.headers["tus-max-size"] == "100"
    await tus_create(client, 101, status=413)
    await tus_create(client, 100)
    deferred = (await tus_create(client, None)).headers["location"]
    await tus_patch(client, deferred, 0, b"x" * 60)
    await tus_patch(client, deferred, 60, b"x" * 41, status=413)
    await tus_patch(client, deferred, 60, chunked(b"x" * 30, b"x" * 30), status=413)
    offset = await offset_of(client, deferred)
    assert offset <= 100
    await tus_patch(client, deferred, offset, b"", headers={"Upload-Length": "101"}, status=413)
    response = await client.post(
        BASE,
        headers={"Upload-Draft-Interop-Version": "8", "Upload-Complete": "?1"},
        content=b"x" * 101,
    )
    assert response.status_code == 413
    assert response.headers["upload-limit"] == "max-size=100"


# -- method override ---------------------------------------------------------------------


async def test_method_override(server: Server) -> None:
    client = server.client
    location = (await tus_create(client, 5)).headers["location"]
    response = await client.post(
        location,
        headers={
            **TUS,
            "X-HTTP-Method-Override": "PATCH",
            "Content-Type": OCTET,
            "Upload-Offset": "0",
        },
        content=b"hello",
    )
    assert response.status_code == 204
    assert response.headers["upload-offset"] == "5"
    head = await client.post(location, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert head.status_code == 200
    assert head.headers["upload-offset"] == "5"
    deleted = await client.post(location, headers={**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert deleted.status_code == 204
    await tus_head(client, location, status=404)


# -- IETF draft --------------------------------------------------------------------------


def ietf_headers(version: int, complete: bool, **extra: str) -> dict[str, str]:
    headers = {"Upload-Draft-Interop-Version": str(version)}
    if version == 3:
        headers["Upload-Incomplete"] = "?0" if complete else "?1"
    else:
        headers["Upload-Complete"] = "?1" if complete else "?0"
    headers.update(extra)
    return headers


def completeness(response: httpx.Response, version: int) -> bool:
    if version == 3:
        return response.headers["upload-incomplete"] == "?0"
    return response.headers["upload-complete"] == "?1"


async def ietf_append(
    client: httpx.AsyncClient,
    url: str,
    version: int,
    offset: int,
    data: bytes,
    *,
    complete: bool,
    status: int = 204,
    **extra: str,
) -> httpx.Response:
    headers = ietf_headers(version, complete, **{"Upload-Offset": str(offset), **extra})
    if data and version >= 6:
        headers["Content-Type"] = PARTIAL
    response = await client.patch(url, headers=headers, content=data)
    assert response.status_code == status, response.text
    return response


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7, 8, 9])
async def test_ietf_careful_flow(server: Server, version: int) -> None:
    client = server.client
    extra = {"Upload-Length": str(len(DATA))} if version >= 6 else {}
    created = await client.post(BASE, headers=ietf_headers(version, False, **extra))
    assert created.status_code == 201
    assert created.headers["upload-draft-interop-version"] == str(version)
    assert "tus-resumable" not in created.headers
    assert created.headers["upload-offset"] == "0"
    assert not completeness(created, version)
    if version >= 6:
        assert created.headers["upload-limit"] == "min-size=0"
    location = created.headers["location"]
    ivh = {"Upload-Draft-Interop-Version": str(version)}
    head = await client.head(location, headers=ivh)
    assert head.status_code in (200, 204)
    assert head.headers["upload-offset"] == "0"
    assert head.headers["cache-control"] == "no-store"
    assert not completeness(head, version)
    offset = 0
    for size in (100, 900):
        response = await ietf_append(
            client, location, version, offset, DATA[offset : offset + size], complete=False
        )
        offset += size
        assert response.headers["upload-offset"] == str(offset)
        assert not completeness(response, version)
    head = await client.head(location, headers=ivh)
    assert head.headers["upload-offset"] == str(offset)
    if version >= 6:
        assert head.headers["upload-length"] == str(len(DATA))
        assert head.headers["upload-limit"] == "min-size=0"
    done = await ietf_append(client, location, version, offset, DATA[offset:], complete=True)
    assert completeness(done, version)
    head = await client.head(location, headers=ivh)
    assert completeness(head, version)
    assert head.headers["upload-offset"] == str(len(DATA))
    assert await download(client, location) == DATA


@pytest.mark.parametrize("version", [3, 4, 5, 6, 7, 8, 9])
async def test_ietf_optimistic_creation(server: Server, version: int) -> None:
    client = server.client
    created = await client.post(BASE, headers=ietf_headers(version, True), content=DATA)
    assert created.status_code == 201
    assert completeness(created, version)
    assert created.headers["upload-offset"] == str(len(DATA))
    location = created.headers["location"]
    head = await client.head(location, headers={"Upload-Draft-Interop-Version": str(version)})
    assert completeness(head, version)
    assert await download(client, location) == DATA


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_ietf_creation_by_other_methods(server: Server, method: str) -> None:
    response = await server.client.request(
        method, BASE, headers=ietf_headers(8, True), content=b"abc"
    )
    assert response.status_code == 201
    assert await download(server.client, response.headers["location"]) == b"abc"


@pytest.mark.parametrize("version", [6, 8])
async def test_ietf_completion_by_empty_append(server: Server, version: int) -> None:
    client = server.client
    created = await client.post(BASE, headers=ietf_headers(version, False), content=b"abc")
    location = created.headers["location"]
    done = await ietf_append(client, location, version, 3, b"", complete=True)
    assert completeness(done, version)
    assert done.headers["upload-length"] == "3"
    assert await download(client, location) == b"abc"


@pytest.mark.parametrize("version", [3, 5, 6, 8])
async def test_ietf_409(server: Server, version: int) -> None:
    client = server.client
    created = await client.post(BASE, headers=ietf_headers(version, False), content=b"abc")
    location = created.headers["location"]
    response = await ietf_append(client, location, version, 1, b"zz", complete=False, status=409)
    assert response.headers["upload-offset"] == "3"
    assert not completeness(response, version)
    if version >= 6:
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["type"] == PROBLEM_BASE + "mismatching-upload-offset"
        assert problem["expected-offset"] == 3
    # The offset the 409 gave is accepted by the next append.
    await ietf_append(client, location, version, 3, b"de", complete=True)
    assert await download(client, location) == b"abcde"


async def test_ietf_409_problem_has_provided_offset(server: Server) -> None:
    client = server.client
    created = await client.post(BASE, headers=ietf_headers(8, False), content=b"abc")
    response = await ietf_append(
        client, created.headers["location"], 8, 1, b"zz", complete=False, status=409
    )
    assert response.json()["provided-offset"] == 1


async def test_ietf_v6_append_needs_partial_upload_type(server: Server) -> None:
    client = server.client
    created = await client.post(BASE, headers=ietf_headers(6, False))
    location = created.headers["location"]
    headers = ietf_headers(6, False, **{"Upload-Offset": "0", "Content-Type": OCTET})
    response = await client.patch(location, headers=headers, content=b"abc")
    assert response.status_code == 415
    head = await client.head(location, headers={"Upload-Draft-Interop-Version": "6"})
    assert head.headers["upload-offset"] == "0"


async def test_ietf_inconsistent_length_is_400(server: Server) -> None:
    client = server.client
    response = await client.post(
        BASE, headers=ietf_headers(8, True, **{"Upload-Length": "4"}), content=b"abc"
    )
    assert response.status_code == 400
    assert response.json()["type"] == PROBLEM_BASE + "inconsistent-upload-length"
    created = await client.post(
        BASE, headers=ietf_headers(8, False, **{"Upload-Length": "5"}), content=b"abc"
    )
    location = created.headers["location"]
    await ietf_append(
        client, location, 8, 3, b"de", complete=False, status=400, **{"Upload-Length": "6"}
    )
    # ?1 with a body that ends short of the declared length.
    await ietf_append(client, location, 8, 3, b"d", complete=True, status=400)
    head = await client.head(location, headers={"Upload-Draft-Interop-Version": "8"})
    assert head.headers["upload-offset"] == "3"
    assert head.headers["upload-complete"] == "?0"


async def test_ietf_complete_chunked_body_short_of_length_is_400(server: Server) -> None:
    response = await server.client.post(
        BASE,
        headers=ietf_headers(8, True, **{"Upload-Length": "10"}),
        content=chunked(b"abc", b"de"),
    )
    assert response.status_code == 400


async def test_ietf_append_to_complete_upload_is_rejected(server: Server) -> None:
    client = server.client
    created = await client.post(BASE, headers=ietf_headers(8, True), content=b"abc")
    location = created.headers["location"]
    response = await client.patch(
        location,
        headers=ietf_headers(8, True, **{"Upload-Offset": "3", "Content-Type": PARTIAL}),
        content=b"d",
    )
    assert 400 <= response.status_code < 500
    assert await download(client, location) == b"abc"


async def test_ietf_invalid_values_are_treated_as_absent(server: Server) -> None:
    client = server.client
    created = await client.post(BASE, headers=ietf_headers(8, False), content=b"abc")
    location = created.headers["location"]
    for offset, complete in (("-5", "?0"), ("3", "true")):
        response = await client.patch(
            location,
            headers={
                "Upload-Draft-Interop-Version": "8",
                "Upload-Offset": offset,
                "Upload-Complete": complete,
                "Content-Type": PARTIAL,
            },
            content=b"d",
        )
        assert response.status_code == 400
    head = await client.head(location, headers={"Upload-Draft-Interop-Version": "8"})
    assert head.headers["upload-offset"] == "3"


async def test_ietf_unsupported_version_is_400(server: Server) -> None:
    response = await server.client.post(
        BASE, headers={"Upload-Draft-Interop-Version": "2", "Upload-Complete": "?1"}
    )
    assert response.status_code == 400


async def test_ietf_cancellation(server: Server) -> None:
    client = server.client
    created = await client.post(BASE, headers=ietf_headers(8, False), content=b"abc")
    location = created.headers["location"]
    deleted = await client.delete(location, headers={"Upload-Draft-Interop-Version": "8"})
    assert deleted.status_code == 204
    head = await client.head(location, headers={"Upload-Draft-Interop-Version": "8"})
    assert head.status_code == 404


@pytest.mark.parametrize("version", [3, 6, 8])
async def test_ietf_104_before_the_body(server: Server, version: int) -> None:
    request = RawRequest(
        server.app,
        "POST",
        BASE,
        [("Host", "up.example"), *ietf_headers(version, True).items(), ("Content-Length", "6")],
        [b"abc", b"def"],
        interim=True,
    )
    response = await request.run()
    assert response.status == 201
    assert len(response.interim) == 1
    status, headers = response.interim[0]
    interim = dict(headers)
    assert status == 104
    assert interim["location"] == response.header("location")
    assert interim["location"].startswith("http://up.example/files/")
    assert interim["upload-draft-interop-version"] == str(version)
    assert await download(server.client, interim["location"]) == b"abcdef"


async def test_no_104_for_tus(server: Server) -> None:
    request = RawRequest(
        server.app,
        "POST",
        BASE,
        [*TUS.items(), ("Upload-Length", "3"), ("Content-Type", OCTET), ("Content-Length", "3")],
        [b"abc"],
        interim=True,
    )
    response = await request.run()
    assert response.status == 201
    assert response.interim == []


# -- CORS --------------------------------------------------------------------------------


async def test_cors_preflight(server: Server) -> None:
    response = await server.client.options(
        BASE,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "upload-offset, tus-resumable",
        },
    )
    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"POST", "PATCH", "HEAD", "DELETE"} <= methods
    allowed = {
        h.strip().lower() for h in response.headers["access-control-allow-headers"].split(",")
    }
    assert {
        "upload-offset",
        "upload-length",
        "upload-metadata",
        "upload-checksum",
        "upload-concat",
        "upload-complete",
        "upload-draft-interop-version",
        "tus-resumable",
        "content-type",
        "x-http-method-override",
    } <= allowed


async def test_cors_exposes_protocol_headers(server: Server) -> None:
    response = await server.client.post(
        BASE, headers={**TUS, "Upload-Length": "3", "Origin": "https://app.example"}
    )
    assert response.status_code == 201
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = {
        h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")
    }
    assert {
        "location",
        "upload-offset",
        "upload-length",
        "upload-metadata",
        "upload-defer-length",
        "upload-expires",
        "upload-concat",
        "upload-complete",
        "upload-limit",
        "tus-resumable",
        "tus-version",
        "tus-extension",
        "tus-max-size",
    } <= exposed
    error = await server.client.head(BASE + "0" * 32, headers={**TUS, "Origin": "https://x"})
    assert error.headers["access-control-allow-origin"] == "*"


async def test_cors_restricted_origins(make_server: MakeServer) -> None:
    server = await make_server(cors_origins=("https://good.example",))
    preflight = {"Access-Control-Request-Method": "POST"}
    bad = await server.client.options(BASE, headers={**preflight, "Origin": "https://evil.example"})
    assert bad.status_code == 403
    assert "access-control-allow-origin" not in bad.headers
    good = await server.client.options(
        BASE, headers={**preflight, "Origin": "https://good.example"}
    )
    assert good.status_code in (200, 204)
    assert good.headers["access-control-allow-origin"] == "https://good.example"
    assert "origin" in good.headers["vary"].lower()


# -- service endpoints -------------------------------------------------------------------


async def test_health_ready_metrics(server: Server) -> None:
    client = server.client
    health = await client.get("/health")
    assert health.status_code == 200
    ready = await client.get("/ready")
    assert ready.status_code == 200
    await tus_upload(client, b"abc")
    metrics = await client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'tether_requests_total{method="POST",status="201"} 1' in text
    assert "tether_uploads_created_total 1" in text
    assert "tether_uploads_completed_total 1" in text
    assert "tether_bytes_received_total 3" in text
    assert (await client.head("/health")).status_code == 200


async def test_ready_fails_while_draining(server: Server) -> None:
    server.app.begin_drain()
    ready = await RawRequest(server.app, "GET", "/ready").run(check=False)
    assert ready.status == 503
    assert b"draining" in ready.body


# -- hostile requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/files/..",
        "/files/../etc/passwd",
        "/files/a/../b",
        "/files/a\x00b",
        "/files/\x00",
        "/files/a/b",
        "/files/a.b",
        "/files/%2e%2e",
        "/files/" + "a" * 129,
        "/files//",
        "/elsewhere",
        "/",
        "",
    ],
)
@pytest.mark.parametrize("method", ["HEAD", "PATCH", "DELETE", "GET", "POST"])
async def test_bad_upload_paths_are_4xx(server: Server, path: str, method: str) -> None:
    headers = [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0")]
    response = await asgi_call(server.app, method, path, headers, [b"x"])
    assert 400 <= response.status < 500
    assert not any(p.exists() for p in server.root.glob("**/passwd"))


async def test_header_flood_is_431(server: Server) -> None:
    flood = [(f"x-flood-{i}", "v") for i in range(200)]
    response = await asgi_call(server.app, "POST", BASE, [*TUS.items(), *flood])
    assert response.status == 431
    big = [("x-big", "v" * 20_000)]
    response = await asgi_call(server.app, "HEAD", BASE + "a", [*TUS.items(), *big])
    assert response.status == 431
    via_httpx = await server.client.post(
        BASE, headers=[*TUS.items(), ("Upload-Length", "1"), *flood]
    )
    assert via_httpx.status_code == 431


async def test_repeated_protocol_headers_are_400(server: Server) -> None:
    location = (await tus_create(server.client, 10)).headers["location"]
    path = httpx.URL(location).path
    response = await asgi_call(
        server.app,
        "PATCH",
        path,
        [
            *TUS.items(),
            ("Content-Type", OCTET),
            ("Upload-Offset", "0"),
            ("Upload-Offset", "5"),
        ],
        [b"abc"],
    )
    assert response.status == 400
    assert await offset_of(server.client, location) == 0


async def test_non_latin1_and_binary_header_values(server: Server) -> None:
    response = await asgi_call(
        server.app,
        "POST",
        BASE,
        [*TUS.items(), ("Upload-Length", "3"), ("Upload-Metadata", b"name \xff\xfe")],
    )
    assert response.status == 400


async def test_location_is_absolute_from_host(server: Server) -> None:
    response = await asgi_call(
        server.app,
        "POST",
        BASE,
        [("Host", "up.example:8443"), *TUS.items(), ("Upload-Length", "1")],
    )
    assert response.status == 201
    location = response.header("location")
    assert location is not None
    assert location.startswith("http://up.example:8443/files/")
    forged = await asgi_call(
        server.app, "POST", BASE, [("Host", "evil\r\nx"), *TUS.items(), ("Upload-Length", "1")]
    )
    assert forged.status == 201
    assert (forged.header("location") or "").startswith("http://test/files/")


async def test_upload_ids_are_unguessable(server: Server) -> None:
    ids = {upload_id((await tus_create(server.client, 1)).headers["location"]) for _ in range(20)}
    assert len(ids) == 20
    assert all(len(i) >= 32 for i in ids)


async def test_204_has_no_content_length(server: Server) -> None:
    response = await asgi_call(server.app, "OPTIONS", BASE)
    assert response.status == 204
    assert response.header("content-length") is None


async def test_draining_refuses_new_writes_with_503_reason(server: Server) -> None:
    location = (await tus_create(server.client, 10)).headers["location"]
    server.app.begin_drain()
    # 503 is the one 5xx the server means to send: check it by hand, not via the hook.
    response = await RawRequest(
        server.app,
        "PATCH",
        httpx.URL(location).path,
        [*TUS.items(), ("Content-Type", OCTET), ("Upload-Offset", "0")],
        [b"abc"],
    ).run(check=False)
    assert response.status == 503
    assert response.header("retry-after") == "1"
    assert response.body.endswith(b"\n") and response.body.count(b"\n") == 1


async def test_location_from_trusted_forwarded_headers(make_server: MakeServer) -> None:
    trusting = await make_server(trust_forwarded=True)
    cases = [
        (
            [("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "up.example")],
            "https://up.example",
        ),
        (
            [("Forwarded", 'for=1.2.3.4;proto=https;host="lb.example:8443"')],
            "https://lb.example:8443",
        ),
        ([], "http://node.internal"),
    ]
    for extra, prefix in cases:
        response = await asgi_call(
            trusting.app,
            "POST",
            BASE,
            [("Host", "node.internal"), *extra, *TUS.items(), ("Upload-Length", "1")],
        )
        assert response.status == 201
        assert (response.header("location") or "").startswith(prefix + BASE), extra


async def test_forwarded_headers_are_ignored_unless_trusted(server: Server) -> None:
    response = await asgi_call(
        server.app,
        "POST",
        BASE,
        [
            ("Host", "node.internal"),
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "attacker.example"),
            *TUS.items(),
            ("Upload-Length", "1"),
        ],
    )
    assert (response.header("location") or "").startswith("http://node.internal" + BASE)


async def test_client_switches_count_forwarded_addresses_when_trusted(
    make_server: MakeServer,
) -> None:
    trusting = await make_server(trust_forwarded=True)
    client = trusting.client
    location = (await tus_create(client, 6)).headers["location"]
    upload_id = location.rsplit("/", 1)[1]
    for at, address in [(0, "10.0.0.1"), (2, "10.0.0.1"), (4, "10.0.0.2")]:
        await tus_patch(
            client, location, at, b"ab", headers={"X-Forwarded-For": f"{address}, 192.0.2.1"}
        )
    record = await trusting.service.state.get(upload_id)
    assert record is not None
    assert record.last_client == "10.0.0.2"
    # Created from the transport's own address, then 10.0.0.1 twice, then 10.0.0.2.
    assert record.client_switches == 2
