"""Property tests: whatever arrives, the protocol layer parses it or raises its one error,
and the app answers 4xx (never 5xx) without touching committed state it was not asked to
change.

Bounded so the file runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.protocol.support import id_from_url
from tests.test_handlers import BASE, NOW, OCTET, PARTIAL, Clock, RawRequest, RawResponse
from tether.engine import EngineConfig, UploadService
from tether.protocol.commands import Append, Command, Create, Download, Head, Options, Terminate
from tether.protocol.errors import UploadError
from tether.protocol.headers import (
    ByteRange,
    format_metadata,
    parse_metadata,
    parse_range,
    parse_sf_boolean,
    parse_sf_integer,
    parse_uint,
)
from tether.protocol.message import Headers, Limits
from tether.protocol.requests import parse_request
from tether.server.app import TetherApp
from tether.server.config import ServerConfig
from tether.state.memory import MemoryStateStore
from tether.state.sqlite import SqliteStateStore
from tether.storage.filesystem import FilesystemByteStore
from tether.storage.memory import MemoryByteStore

# TETHER_FUZZ_EXAMPLES raises the budget for a longer hunt; the default keeps CI quick.
EXAMPLES = int(os.environ.get("TETHER_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Header values as an HTTP/1.1 parser would pass them on: HTAB, visible ASCII, obs-text.
FIELD_CHARS = st.one_of(
    st.just("\t"),
    st.characters(min_codepoint=0x20, max_codepoint=0x7E),
    st.characters(min_codepoint=0x80, max_codepoint=0xFF),
)
field_text = st.text(FIELD_CHARS, max_size=40)
small_ints = st.integers(min_value=-3, max_value=40).map(str)
big_ints = st.integers(min_value=-(2**70), max_value=2**70).map(str)

TUS = [("Tus-Resumable", "1.0.0")]
METHODS = ["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"]
methods = st.one_of(
    st.sampled_from(METHODS),
    st.sampled_from(METHODS).map(str.lower),
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-", min_size=1, max_size=8),
)

# Placeholders resolved when the request is sent, so hypothesis often hits the values that
# reach deep code paths (the right offset, a matching checksum, our own upload's URL).
OFFSET = "<offset>"
SHA1 = "<sha1>"
SELF_URL = "<self>"

HEADER_VALUES: dict[str, st.SearchStrategy[str]] = {
    "tus-resumable": st.one_of(
        st.just("1.0.0"), st.sampled_from(["0.2.2", "", " 1.0.0"]), field_text
    ),
    "upload-offset": st.one_of(st.just(OFFSET), small_ints, big_ints, field_text),
    "upload-length": st.one_of(st.just("20"), small_ints, big_ints, field_text),
    "upload-defer-length": st.one_of(st.sampled_from(["1", "0", "2"]), field_text),
    "upload-metadata": st.one_of(
        st.sampled_from(["a", "a YQ==", "a YQ==,b", "a !!", "a YQ==,a YQ==", ",", "a  b"]),
        field_text,
    ),
    "upload-checksum": st.one_of(
        st.just(SHA1),
        st.sampled_from(["sha1 AAAA", "md4 AAAA", "sha1", "crc32c AAAAAA==", "sha256 %%"]),
        field_text,
    ),
    "upload-concat": st.one_of(
        st.sampled_from(["partial", f"final;{SELF_URL}", f"final;{SELF_URL} {SELF_URL}"]),
        st.sampled_from(["final;", "final;/files/zz", "final;/other/x", "final;" + BASE]),
        field_text,
    ),
    "content-type": st.one_of(
        st.sampled_from([OCTET, PARTIAL, "text/plain", "", f"{OCTET}; x=1", PARTIAL.upper()]),
        field_text,
    ),
    "upload-complete": st.one_of(st.sampled_from(["?0", "?1", "true", "?1;a", "1"]), field_text),
    "upload-incomplete": st.one_of(st.sampled_from(["?0", "?1", "false"]), field_text),
    "upload-draft-interop-version": st.one_of(
        st.sampled_from([str(v) for v in range(2, 11)]), field_text
    ),
    "x-http-method-override": st.one_of(st.sampled_from(METHODS), field_text),
    "range": st.one_of(
        st.sampled_from(["bytes=0-1", "bytes=-3", "bytes=5-", "bytes=x"]), field_text
    ),
    "origin": st.sampled_from(["https://a.example", "null", ""]),
    "access-control-request-method": st.sampled_from(["PATCH", ""]),
}

header_names = st.one_of(
    st.sampled_from(sorted(HEADER_VALUES)),
    st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12),
)


@st.composite
def header_lists(draw: st.DrawFn, max_size: int = 8) -> list[tuple[str, str]]:
    """Header lists, protocol names favoured, repeats allowed (they must be refused)."""
    headers = []
    for name in draw(st.lists(header_names, max_size=max_size)):
        values = HEADER_VALUES.get(name, field_text)
        case = draw(st.sampled_from([str.lower, str.title, str.upper]))
        headers.append((case(name), draw(values)))
    return headers


# -- pure: parse_request -----------------------------------------------------------------

LIMITS = Limits(max_size=100, max_metadata_bytes=64)
COMMANDS = (Options, Create, Append, Head, Terminate, Download)


@FUZZ
@given(
    method=methods,
    upload_id=st.one_of(st.none(), st.just("abc"), st.text(max_size=10)),
    headers=header_lists(),
    framing=st.sampled_from(["none", "length", "chunked", "garbage"]),
)
def test_parse_request_returns_a_command_or_raises_upload_error(
    method: str, upload_id: str | None, headers: list[tuple[str, str]], framing: str
) -> None:
    headers = [(k, v.replace(OFFSET, "0").replace(SHA1, "sha1 AAAA")) for k, v in headers]
    if framing == "length":
        headers.append(("Content-Length", "5"))
    elif framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
    elif framing == "garbage":
        headers.append(("Content-Length", "-x"))
    try:
        command: Command = parse_request(method, upload_id, Headers(headers), LIMITS, id_from_url)
    except UploadError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.reason and "\n" not in exc.reason and "\r" not in exc.reason
        return
    assert isinstance(command, COMMANDS)
    if isinstance(command, Create) and command.length is not None:
        assert 0 <= command.length <= 100
    if isinstance(command, Append):
        assert command.offset >= 0
        assert command.length is None or 0 <= command.length <= 100


@FUZZ
@given(st.text(max_size=60), st.integers(min_value=0, max_value=2**40))
def test_parse_range_is_within_the_object(text: str, size: int) -> None:
    try:
        result = parse_range(text, size)
    except UploadError as exc:
        assert exc.status == 416
        assert ("Content-Range", f"bytes */{size}") in exc.headers
        return
    if result is not None:
        assert isinstance(result, ByteRange)
        assert 0 <= result.start < result.end <= size


@FUZZ
@given(st.text(max_size=40))
def test_scalar_parsers_never_raise_anything_else(text: str) -> None:
    try:
        number = parse_uint("X", text)
    except UploadError as exc:
        assert exc.status == 400
    else:
        assert 0 <= number < 2**63
    value = parse_sf_integer(text)
    assert value is None or 0 <= value < 10**15
    assert parse_sf_boolean(text) in (None, True, False)
    try:
        parse_metadata(text, 64)
    except UploadError as exc:
        assert exc.status == 400


metadata_keys = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=10,
)


@FUZZ
@given(st.dictionaries(metadata_keys, st.one_of(st.none(), st.binary(min_size=1, max_size=20))))
def test_metadata_round_trips(pairs: dict[str, bytes | None]) -> None:
    items = tuple(pairs.items())
    assert parse_metadata(format_metadata(items), 10_000) == items


# -- the app under garbage ---------------------------------------------------------------

LENGTH = 20
MAX_SIZE = 1000


def filler(start: int, end: int) -> bytes:
    """The bytes the test itself writes at ``[start, end)``: a fixed pattern."""
    return bytes((100 + i) % 256 for i in range(start, end))


# How the upload under attack was created: its length known, deferred, or a partial.
KINDS: dict[str, list[tuple[str, str]]] = {
    "known": [*TUS, ("Upload-Length", str(LENGTH))],
    "deferred": [*TUS, ("Upload-Defer-Length", "1")],
    "partial": [*TUS, ("Upload-Length", str(LENGTH)), ("Upload-Concat", "partial")],
}


@asynccontextmanager
async def _stores(backend: str) -> AsyncIterator[tuple[Any, Any]]:
    if backend == "memory":
        yield MemoryStateStore(), MemoryByteStore()
        return
    with tempfile.TemporaryDirectory() as tmp:
        state = SqliteStateStore(str(Path(tmp) / "state.db"))
        try:
            yield state, FilesystemByteStore(Path(tmp) / "uploads")
        finally:
            await state.close()


def _app(state: Any, storage: Any) -> TetherApp:
    service = UploadService(
        state, storage, EngineConfig(node_id="f", max_size=MAX_SIZE), clock=Clock(NOW)
    )
    return TetherApp(ServerConfig(node_id="f", max_size=MAX_SIZE, access_log=False), service)


async def _call(
    app: TetherApp,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    framing: str = "length",
    split: int = 0,
) -> RawResponse:
    headers = list(headers)
    chunks: list[bytes] = []
    if body and framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        cut = split % (len(body) + 1)
        chunks = [c for c in (body[:cut], body[cut:]) if c]
    elif body:
        headers.append(("Content-Length", str(len(body))))
        chunks = [body]
    return await RawRequest(app, method, path, headers, chunks).run()


async def _head_state(app: TetherApp, path: str) -> tuple[int, int | None] | None:
    """(offset, length) by HEAD; None once the upload is gone."""
    response = await _call(app, "HEAD", path, TUS)
    if response.status in (404, 410):
        return None
    assert response.status == 200
    offset = response.header("upload-offset")
    assert offset is not None
    length = response.header("upload-length")
    assert (length is None) == (response.header("upload-defer-length") == "1")
    return int(offset), None if length is None else int(length)


# Valid requests to start from: mutating one reaches the code behind the first check far
# more often than headers drawn from nothing.
TEMPLATES: list[tuple[str, list[tuple[str, str]]]] = [
    ("PATCH", [*TUS, ("Content-Type", OCTET), ("Upload-Offset", OFFSET)]),
    (
        "PATCH",
        [*TUS, ("Content-Type", OCTET), ("Upload-Offset", OFFSET), ("Upload-Checksum", SHA1)],
    ),
    (
        "PATCH",
        [
            ("Upload-Draft-Interop-Version", "3"),
            ("Upload-Offset", OFFSET),
            ("Upload-Incomplete", "?1"),
        ],
    ),
    (
        "PATCH",
        [
            ("Upload-Draft-Interop-Version", "5"),
            ("Upload-Offset", OFFSET),
            ("Upload-Complete", "?0"),
        ],
    ),
    (
        "PATCH",
        [
            ("Upload-Draft-Interop-Version", "6"),
            ("Upload-Offset", OFFSET),
            ("Upload-Complete", "?0"),
            ("Content-Type", PARTIAL),
        ],
    ),
    (
        "PATCH",
        [
            ("Upload-Draft-Interop-Version", "8"),
            ("Upload-Offset", OFFSET),
            ("Upload-Complete", "?1"),
            ("Content-Type", PARTIAL),
            ("Upload-Length", "20"),
        ],
    ),
    (
        "PATCH",
        [*TUS, ("Content-Type", OCTET), ("Upload-Offset", OFFSET), ("Upload-Length", "25")],
    ),
    ("HEAD", [*TUS]),
    ("POST", [*TUS, ("Upload-Length", "20"), ("Content-Type", OCTET)]),
    ("POST", [("Upload-Draft-Interop-Version", "8"), ("Upload-Complete", "?1")]),
    ("DELETE", [*TUS]),
    ("GET", []),
    ("OPTIONS", []),
]


@dataclass(frozen=True)
class Garbage:
    method: str
    target: str  # "self", "base", "other"
    other_path: str
    headers: list[tuple[str, str]]
    body: bytes
    framing: str
    split: int


@st.composite
def garbage_requests(draw: st.DrawFn) -> Garbage:
    template_method, template = draw(st.sampled_from(TEMPLATES))
    headers = list(template)
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        kind = draw(st.sampled_from(["replace", "drop", "add"]))
        if kind == "add" or not headers:
            headers += draw(header_lists(max_size=1))
            continue
        index = draw(st.integers(min_value=0, max_value=len(headers) - 1))
        if kind == "drop":
            del headers[index]
        else:
            name = headers[index][0]
            headers[index] = (name, draw(HEADER_VALUES.get(name.lower(), field_text)))
    return Garbage(
        method=template_method if draw(st.integers(0, 3)) else draw(methods),
        target=draw(st.sampled_from(["self"] * 6 + ["base", "other"])),
        other_path=draw(
            st.one_of(
                st.sampled_from(["/files/..", "/files/a/b", "/health", "/metrics", "/", BASE[:-1]]),
                st.text(max_size=20),
            )
        ),
        headers=headers,
        body=draw(st.binary(max_size=30)),
        framing=draw(st.sampled_from(["length", "chunked"])),
        split=draw(st.integers(min_value=0, max_value=30)),
    )


def _effective_method(garbage: Garbage) -> str:
    for name, value in garbage.headers:
        if name.lower() == "x-http-method-override" and value.strip():
            return value.strip().upper()
    return garbage.method.upper()


async def _garbage_scenario(backend: str, kind: str, prefix: int, requests: list[Garbage]) -> None:
    async with _stores(backend) as (state, storage):
        app = _app(state, storage)
        created = await _call(app, "POST", BASE, KINDS[kind])
        assert created.status == 201
        location = created.header("location")
        assert location is not None
        path = location[location.index(BASE) :]
        expected = bytearray(filler(0, prefix))
        if prefix:
            patched = await _call(
                app,
                "PATCH",
                path,
                [*TUS, ("Content-Type", OCTET), ("Upload-Offset", "0")],
                bytes(expected),
            )
            assert patched.status == 204
        length = None if kind == "deferred" else LENGTH
        for garbage in requests:
            offset = len(expected)
            target = {"self": path, "base": BASE, "other": garbage.other_path}[garbage.target]
            checksum = base64.b64encode(hashlib.sha1(garbage.body).digest()).decode()
            headers = [
                (
                    name,
                    value.replace(OFFSET, str(offset))
                    .replace(SHA1, "sha1 " + checksum)
                    .replace(SELF_URL, path),
                )
                for name, value in garbage.headers
            ]
            # _call checks: never a 5xx, and an error is a 4xx with a one-line reason.
            response = await _call(
                app, garbage.method, target, headers, garbage.body, garbage.framing, garbage.split
            )
            event(f"{garbage.target} -> {response.status}")
            now = await _head_state(app, path)
            if now is None:
                # Only a DELETE of this very upload may make it disappear.
                assert garbage.target == "self", response
                assert _effective_method(garbage) == "DELETE"
                assert response.status == 204
                return
            new_offset, new_length = now
            # A known length never changes; a deferred one is set at most once.
            if length is not None:
                assert new_length == length, "the length changed"
            elif new_length is not None:
                event("garbage declared the length")
                assert garbage.target == "self"
                assert new_offset <= new_length <= MAX_SIZE
                length = new_length
            assert new_offset >= offset, "the offset went back"
            gained = new_offset - offset
            if gained:
                event("garbage appended bytes")
                # Only a write to this upload moves it, by exactly its body's first bytes:
                # a successful one, a chunked one cut off (413) where it would have gone
                # past Upload-Length, or an IETF one that claimed to complete the upload but
                # ended short of its length (400), which both keep what came before.
                assert garbage.target == "self"
                assert (
                    200 <= response.status < 300
                    or response.status == 413
                    or (response.status == 400 and b"inconsistent" in response.body)
                ), response
                assert gained <= len(garbage.body)
                expected += garbage.body[:gained]
            assert len(expected) <= (MAX_SIZE if length is None else length)
        # Finish the upload and check every byte.
        offset = len(expected)
        declare = [] if length is not None else [("Upload-Length", str(max(offset, LENGTH)))]
        length = length if length is not None else max(offset, LENGTH)
        if offset < length or declare:
            done = await _call(
                app,
                "PATCH",
                path,
                [*TUS, ("Content-Type", OCTET), ("Upload-Offset", str(offset)), *declare],
                filler(offset, length),
            )
            assert done.status == 204, done
            expected += filler(offset, length)
        assert await _head_state(app, path) == (length, length)
        got = await _call(app, "GET", path, [])
        assert got.status == 200
        assert got.body == bytes(expected)


scenarios = {
    "kind": st.sampled_from(sorted(KINDS)),
    "prefix": st.integers(min_value=0, max_value=15),
    "requests": st.lists(garbage_requests(), min_size=1, max_size=3),
}


@FUZZ
@given(**scenarios)
def test_garbage_never_5xx_and_never_corrupts_memory(
    kind: str, prefix: int, requests: list[Garbage]
) -> None:
    asyncio.run(_garbage_scenario("memory", kind, prefix, requests))


@settings(FUZZ, max_examples=max(1, EXAMPLES * 3 // 10))
@given(**scenarios)
def test_garbage_never_5xx_and_never_corrupts_sqlite(
    kind: str, prefix: int, requests: list[Garbage]
) -> None:
    asyncio.run(_garbage_scenario("sqlite", kind, prefix, requests))


@FUZZ
@given(
    method=methods,
    path=st.text(max_size=30),
    headers=header_lists(max_size=12),
    body=st.binary(max_size=20),
)
def test_any_request_anywhere_is_never_5xx(
    method: str, path: str, headers: list[tuple[str, str]], body: bytes
) -> None:
    async def scenario() -> None:
        app = _app(MemoryStateStore(), MemoryByteStore())
        sent = [
            (k, v.replace(OFFSET, "0").replace(SHA1, "x").replace(SELF_URL, "/files/a"))
            for k, v in headers
        ]
        await _call(app, method, path, sent, body)

    asyncio.run(scenario())
