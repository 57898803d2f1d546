"""``parse_request`` for the tus 1.0 dialect: one table, method + headers -> command or
error status."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tests.protocol.support import expect, parse
from tether.protocol.commands import (
    TUS,
    Append,
    Body,
    Command,
    Create,
    Download,
    Head,
    Metadata,
    Options,
    Terminate,
)
from tether.protocol.headers import ChecksumHeader
from tether.protocol.message import Limits
from tether.protocol.requests import effective_method

TR = ("Tus-Resumable", "1.0.0")
OCTET = ("Content-Type", "application/offset+octet-stream")
NO_BODY = Body(None, False)
SHA1 = hashlib.sha1(b"hello").digest()
SHA1_B64 = base64.b64encode(SHA1).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def create(
    length: int | None,
    body: Body = NO_BODY,
    *,
    metadata: Metadata = (),
    checksum: ChecksumHeader | None = None,
    partial: bool = False,
    final_of: tuple[str, ...] | None = None,
) -> Create:
    return Create(
        TUS, length, metadata, body, checksum=checksum, partial=partial, final_of=final_of
    )


Case = tuple[str, str, str | None, list[tuple[str, str]], Command | int]

CASES: list[Case] = [
    # -- OPTIONS: no Tus-Resumable needed, a wrong one ignored ------------------------
    ("options", "OPTIONS", None, [], Options(TUS)),
    ("options-old-version", "OPTIONS", None, [("Tus-Resumable", "0.2.2")], Options(TUS)),
    ("options-on-upload", "OPTIONS", "abc", [], Options(TUS)),
    # -- Tus-Resumable -----------------------------------------------------------------
    ("post-no-tus-resumable", "POST", None, [("Upload-Length", "5")], 412),
    (
        "post-old-tus-resumable",
        "POST",
        None,
        [("Tus-Resumable", "0.2.2"), ("Upload-Length", "5")],
        412,
    ),
    (
        "post-empty-tus-resumable",
        "POST",
        None,
        [("Tus-Resumable", ""), ("Upload-Length", "5")],
        412,
    ),
    (
        "post-padded-tus-resumable",
        "POST",
        None,
        [("Tus-Resumable", " 1.0.0 "), ("Upload-Length", "5")],
        create(5),
    ),
    ("head-no-tus-resumable", "HEAD", "abc", [], 412),
    ("patch-no-tus-resumable", "PATCH", "abc", [OCTET, ("Upload-Offset", "0")], 412),
    ("delete-wrong-tus-resumable", "DELETE", "abc", [("Tus-Resumable", "2.0.0")], 412),
    # -- creation: Upload-Length / Upload-Defer-Length -----------------------------
    ("post-length", "POST", None, [TR, ("Upload-Length", "5")], create(5)),
    ("post-length-zero", "POST", None, [TR, ("Upload-Length", "0")], create(0)),
    ("post-length-max", "POST", None, [TR, ("Upload-Length", "1000")], create(1000)),
    ("post-length-over-max", "POST", None, [TR, ("Upload-Length", "1001")], 413),
    ("post-length-huge", "POST", None, [TR, ("Upload-Length", "9223372036854775808")], 400),
    ("post-length-20-digits", "POST", None, [TR, ("Upload-Length", "1" * 20)], 400),
    ("post-length-negative", "POST", None, [TR, ("Upload-Length", "-1")], 400),
    ("post-length-nonnumeric", "POST", None, [TR, ("Upload-Length", "ten")], 400),
    ("post-length-float", "POST", None, [TR, ("Upload-Length", "5.0")], 400),
    ("post-length-empty", "POST", None, [TR, ("Upload-Length", "")], 400),
    ("post-defer", "POST", None, [TR, ("Upload-Defer-Length", "1")], create(None)),
    ("post-defer-0", "POST", None, [TR, ("Upload-Defer-Length", "0")], 400),
    ("post-defer-true", "POST", None, [TR, ("Upload-Defer-Length", "true")], 400),
    (
        "post-length-and-defer",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Upload-Defer-Length", "1")],
        400,
    ),
    ("post-neither", "POST", None, [TR], 400),
    # -- creation-with-upload ----------------------------------------------------------
    (
        "post-with-body",
        "POST",
        None,
        [TR, OCTET, ("Upload-Length", "5"), ("Content-Length", "3")],
        create(5, Body(3, True)),
    ),
    (
        "post-with-body-content-type-params",
        "POST",
        None,
        [
            TR,
            ("Content-Type", "Application/Offset+Octet-Stream; x=1"),
            ("Upload-Length", "5"),
            ("Content-Length", "5"),
        ],
        create(5, Body(5, True)),
    ),
    (
        "post-with-chunked-body",
        "POST",
        None,
        [TR, OCTET, ("Upload-Defer-Length", "1"), ("Transfer-Encoding", "chunked")],
        create(None, Body(None, True)),
    ),
    (
        "post-body-no-content-type",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Content-Length", "3")],
        415,
    ),
    (
        "post-body-wrong-content-type",
        "POST",
        None,
        [TR, ("Content-Type", "text/plain"), ("Upload-Length", "5"), ("Content-Length", "3")],
        415,
    ),
    (
        "post-empty-body-any-content-type",
        "POST",
        None,
        [TR, ("Content-Type", "text/plain"), ("Upload-Length", "5"), ("Content-Length", "0")],
        create(5, Body(0, False)),
    ),
    (
        "post-body-longer-than-length",
        "POST",
        None,
        [TR, OCTET, ("Upload-Length", "5"), ("Content-Length", "6")],
        413,
    ),
    (
        "post-bad-content-length",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Content-Length", "x")],
        400,
    ),
    # -- Upload-Metadata ---------------------------------------------------------------
    (
        "metadata-good",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Upload-Metadata", f"filename {b64(b'a.txt')},flag")],
        create(5, metadata=(("filename", b"a.txt"), ("flag", None))),
    ),
    (
        "metadata-bad-base64",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Upload-Metadata", "a b*c")],
        400,
    ),
    (
        "metadata-duplicate-key",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Upload-Metadata", f"a {b64(b'1')},a {b64(b'2')}")],
        400,
    ),
    (
        "metadata-empty-key",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Upload-Metadata", ", a")],
        400,
    ),
    (
        "metadata-oversized",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Upload-Metadata", f"k {b64(b'x' * 60)}")],
        400,
    ),
    # -- Upload-Checksum ---------------------------------------------------------------
    (
        "checksum-sha1",
        "POST",
        None,
        [
            TR,
            OCTET,
            ("Upload-Length", "5"),
            ("Content-Length", "5"),
            ("Upload-Checksum", f"sha1 {SHA1_B64}"),
        ],
        create(5, Body(5, True), checksum=ChecksumHeader("sha1", SHA1)),
    ),
    (
        "checksum-unknown-algorithm",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "0"), ("Upload-Checksum", f"md4 {SHA1_B64}")],
        400,
    ),
    (
        "checksum-malformed",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "0"), ("Upload-Checksum", "sha1")],
        400,
    ),
    (
        "checksum-digest-not-base64",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "0"), ("Upload-Checksum", "sha1 %%%")],
        400,
    ),
    # -- Upload-Concat -----------------------------------------------------------------
    (
        "concat-partial",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Upload-Concat", "partial")],
        create(5, partial=True),
    ),
    (
        "concat-partial-deferred",
        "POST",
        None,
        [TR, ("Upload-Defer-Length", "1"), ("Upload-Concat", "partial")],
        create(None, partial=True),
    ),
    (
        "concat-final",
        "POST",
        None,
        [TR, ("Upload-Concat", "final;/files/a /files/b")],
        create(None, final_of=("a", "b")),
    ),
    (
        "concat-final-absolute-urls",
        "POST",
        None,
        [TR, ("Upload-Concat", "final; https://tus.example/files/a  http://x:8080/files/b ")],
        create(None, final_of=("a", "b")),
    ),
    (
        "concat-final-keeps-metadata",
        "POST",
        None,
        [TR, ("Upload-Concat", "final;/files/a"), ("Upload-Metadata", "k")],
        create(None, metadata=(("k", None),), final_of=("a",)),
    ),
    ("concat-final-foreign-url", "POST", None, [TR, ("Upload-Concat", "final;/other/a")], 400),
    ("concat-final-base-only", "POST", None, [TR, ("Upload-Concat", "final;/files/")], 400),
    ("concat-final-nested", "POST", None, [TR, ("Upload-Concat", "final;/files/a/b")], 400),
    ("concat-final-empty", "POST", None, [TR, ("Upload-Concat", "final;")], 400),
    ("concat-final-no-semicolon", "POST", None, [TR, ("Upload-Concat", "final /files/a")], 400),
    (
        "concat-final-too-many",
        "POST",
        None,
        [TR, ("Upload-Concat", "final;" + " ".join(["/files/a"] * 1001))],
        400,
    ),
    (
        "concat-final-with-length",
        "POST",
        None,
        [TR, ("Upload-Concat", "final;/files/a"), ("Upload-Length", "5")],
        400,
    ),
    (
        "concat-final-with-defer",
        "POST",
        None,
        [TR, ("Upload-Concat", "final;/files/a"), ("Upload-Defer-Length", "1")],
        400,
    ),
    (
        "concat-final-with-body",
        "POST",
        None,
        [TR, OCTET, ("Upload-Concat", "final;/files/a"), ("Content-Length", "3")],
        400,
    ),
    (
        "concat-garbage",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Upload-Concat", "sideways")],
        400,
    ),
    ("concat-partial-no-length", "POST", None, [TR, ("Upload-Concat", "partial")], 400),
    # -- PATCH -------------------------------------------------------------------------
    (
        "patch",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "5"), ("Content-Length", "3")],
        Append(TUS, "abc", 5, Body(3, True)),
    ),
    (
        "patch-empty",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "0")],
        Append(TUS, "abc", 0, NO_BODY),
    ),
    (
        "patch-declares-length",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "0"), ("Upload-Length", "9"), ("Content-Length", "3")],
        Append(TUS, "abc", 0, Body(3, True), length=9),
    ),
    (
        "patch-declares-length-over-max",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "0"), ("Upload-Length", "1001")],
        413,
    ),
    (
        "patch-checksum",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "0"), ("Upload-Checksum", f"sha1 {SHA1_B64}")],
        Append(TUS, "abc", 0, NO_BODY, checksum=ChecksumHeader("sha1", SHA1)),
    ),
    ("patch-no-content-type", "PATCH", "abc", [TR, ("Upload-Offset", "0")], 415),
    (
        "patch-wrong-content-type",
        "PATCH",
        "abc",
        [TR, ("Content-Type", "application/octet-stream"), ("Upload-Offset", "0")],
        415,
    ),
    (
        "patch-ietf-content-type",
        "PATCH",
        "abc",
        [TR, ("Content-Type", "application/partial-upload"), ("Upload-Offset", "0")],
        415,
    ),
    ("patch-no-offset", "PATCH", "abc", [TR, OCTET], 400),
    ("patch-negative-offset", "PATCH", "abc", [TR, OCTET, ("Upload-Offset", "-5")], 400),
    ("patch-offset-garbage", "PATCH", "abc", [TR, OCTET, ("Upload-Offset", "0x10")], 400),
    (
        "patch-bad-length",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "0"), ("Upload-Length", "x")],
        400,
    ),
    ("patch-on-creation-url", "PATCH", None, [TR, OCTET, ("Upload-Offset", "0")], 405),
    # -- HEAD, DELETE, GET, others --------------------------------------------------------
    ("head", "HEAD", "abc", [TR], Head(TUS, "abc")),
    ("delete", "DELETE", "abc", [TR], Terminate(TUS, "abc")),
    ("get", "GET", "abc", [], Download("abc", None)),
    ("get-range", "GET", "abc", [("Range", "bytes=0-1")], Download("abc", "bytes=0-1")),
    ("get-with-tus", "GET", "abc", [TR], Download("abc", None)),
    ("get-creation-url", "GET", None, [TR], 405),
    ("head-creation-url", "HEAD", None, [TR], 405),
    ("put-upload", "PUT", "abc", [TR], 405),
    ("post-upload", "POST", "abc", [TR, ("Upload-Length", "5")], 405),
    ("unknown-method", "BREW", "abc", [TR], 405),
    # -- X-HTTP-Method-Override ----------------------------------------------------------
    (
        "override-patch",
        "POST",
        "abc",
        [TR, OCTET, ("X-HTTP-Method-Override", "PATCH"), ("Upload-Offset", "2")],
        Append(TUS, "abc", 2, NO_BODY),
    ),
    (
        "override-lowercase-delete",
        "POST",
        "abc",
        [TR, ("X-HTTP-Method-Override", " delete ")],
        Terminate(TUS, "abc"),
    ),
    ("override-head", "GET", "abc", [TR, ("X-HTTP-Method-Override", "HEAD")], Head(TUS, "abc")),
    ("override-options", "POST", None, [("X-HTTP-Method-Override", "OPTIONS")], Options(TUS)),
    ("override-get", "POST", "abc", [("X-HTTP-Method-Override", "GET")], Download("abc", None)),
    ("override-garbage", "POST", "abc", [TR, ("X-HTTP-Method-Override", "FLY")], 405),
    # -- repeated protocol headers --------------------------------------------------------
    ("repeated-tus-resumable", "HEAD", "abc", [TR, TR], 400),
    (
        "repeated-upload-offset",
        "PATCH",
        "abc",
        [TR, OCTET, ("Upload-Offset", "0"), ("upload-offset", "0")],
        400,
    ),
    (
        "repeated-upload-length",
        "POST",
        None,
        [TR, ("Upload-Length", "5"), ("Upload-Length", "6")],
        400,
    ),
    ("repeated-content-type", "PATCH", "abc", [TR, OCTET, OCTET, ("Upload-Offset", "0")], 400),
    (
        "repeated-method-override",
        "POST",
        "abc",
        [TR, ("X-HTTP-Method-Override", "HEAD"), ("X-HTTP-Method-Override", "DELETE")],
        400,
    ),
    (
        "repeated-other-header-is-fine",
        "HEAD",
        "abc",
        [TR, ("Accept", "a"), ("Accept", "b")],
        Head(TUS, "abc"),
    ),
]


@pytest.mark.parametrize(
    ("method", "upload_id", "headers", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_tus_parse_request(
    method: str, upload_id: str | None, headers: list[tuple[str, str]], expected: Command | int
) -> None:
    expect(method, upload_id, headers, expected)


def test_no_size_limit_accepts_the_largest_length() -> None:
    command = parse("POST", None, [TR, ("Upload-Length", str(2**63 - 1))], Limits())
    assert isinstance(command, Create)
    assert command.length == 2**63 - 1


def test_405_names_allowed_methods() -> None:
    error = expect("PUT", "abc", [TR], 405)
    assert error is not None
    allow = dict(error.headers)["Allow"]
    assert {m.strip() for m in allow.split(",")} >= {"HEAD", "PATCH", "DELETE", "OPTIONS"}
    error = expect("GET", None, [TR], 405)
    assert error is not None
    assert "POST" in dict(error.headers)["Allow"]


def test_412_reason_names_the_version() -> None:
    error = expect("POST", None, [("Upload-Length", "5")], 412)
    assert error is not None
    assert "1.0.0" in error.reason


def test_tus_wins_when_both_dialect_headers_are_sent() -> None:
    command = parse("HEAD", "abc", [TR, ("Upload-Draft-Interop-Version", "6")])
    assert command == Head(TUS, "abc")


@pytest.mark.parametrize(
    ("method", "override", "expected"),
    [
        ("post", None, "POST"),
        ("POST", "patch", "PATCH"),
        ("POST", "  Delete ", "DELETE"),
        ("PATCH", "", "PATCH"),
    ],
)
def test_effective_method(method: str, override: str | None, expected: str) -> None:
    from tether.protocol.message import Headers

    items = [] if override is None else [("X-HTTP-Method-Override", override)]
    assert effective_method(method, Headers(items)) == expected
