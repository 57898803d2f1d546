"""Header value parsers (``tether.protocol.headers``) and request framing
(``tether.protocol.message``): one table per parser, valid and invalid rows together."""

from __future__ import annotations

import base64
import hashlib

import pytest

from tether.protocol.commands import Body
from tether.protocol.errors import UploadError
from tether.protocol.headers import (
    MAX_INT,
    ByteRange,
    ChecksumHeader,
    format_metadata,
    parse_checksum,
    parse_metadata,
    parse_range,
    parse_sf_boolean,
    parse_sf_integer,
    parse_uint,
)
from tether.protocol.message import Headers, Limits, body_of, content_type

BAD = object()  # marks a row whose parse must raise 400


# -- parse_uint --------------------------------------------------------------------------

UINT_CASES = [
    ("0", 0),
    ("42", 42),
    (" 7\t", 7),
    ("007", 7),
    ("9223372036854775807", MAX_INT),
    ("", BAD),
    (" ", BAD),
    ("-1", BAD),
    ("+1", BAD),
    ("1.0", BAD),
    ("1e3", BAD),
    ("0x10", BAD),
    ("1 2", BAD),
    ("1,2", BAD),
    ("9223372036854775808", BAD),  # 2**63: out of range
    ("1" * 20, BAD),
    ("9" * 100_000, BAD),  # a hostile run of digits is refused before int() sees it
    ("\u0661", BAD),  # ARABIC-INDIC DIGIT ONE: int() would take it, the header must not
    ("\uff11", BAD),  # FULLWIDTH DIGIT ONE
]


@pytest.mark.parametrize(
    ("text", "expected"), UINT_CASES, ids=[repr(c[0])[:24] for c in UINT_CASES]
)
def test_parse_uint(text: str, expected: object) -> None:
    if expected is BAD:
        with pytest.raises(UploadError) as info:
            parse_uint("Upload-Length", text)
        assert info.value.status == 400
        assert "Upload-Length" in info.value.reason
    else:
        assert parse_uint("Upload-Length", text) == expected


# -- parse_metadata ----------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


METADATA_CASES = [
    ("", ()),
    ("   ", ()),
    (f"filename {b64(b'world.txt')}", (("filename", b"world.txt"),)),
    (
        f"filename {b64(b'a b')},is_confidential,type {b64(b'image/png')}",
        (("filename", b"a b"), ("is_confidential", None), ("type", b"image/png")),
    ),
    (f" filename {b64(b'x')} , k ", (("filename", b"x"), ("k", None))),
    ("empty ", (("empty", None),)),
    (f"bin {b64(bytes(range(0, 256, 8)))}", (("bin", bytes(range(0, 256, 8))),)),
    ("name !!!", BAD),  # not base64
    ("name YQ", BAD),  # missing padding
    ("name YQ==YQ==", BAD),  # padding in the middle
    ("name \u00e9", BAD),  # non-ASCII value
    (f"a {b64(b'1')},a {b64(b'2')}", BAD),  # duplicate key
    ("a,a", BAD),  # duplicate key without values
    (f",a {b64(b'1')}", BAD),  # empty key
    (f"a {b64(b'1')},", BAD),  # trailing comma: empty key
    (f"a {b64(b'1')},,b", BAD),
    (f"a  {b64(b'1')}", BAD),  # two spaces: three parts
    (f"a {b64(b'1')} extra", BAD),
    (f"k\u00e9y {b64(b'1')}", BAD),  # non-ASCII key
    ("k\x01y", BAD),  # control character in key
    ("a" * 65, BAD),  # longer than max_metadata_bytes (64)
]


@pytest.mark.parametrize(
    ("text", "expected"), METADATA_CASES, ids=[repr(c[0])[:24] for c in METADATA_CASES]
)
def test_parse_metadata(text: str, expected: object) -> None:
    if expected is BAD:
        with pytest.raises(UploadError) as info:
            parse_metadata(text, 64)
        assert info.value.status == 400
        assert "Upload-Metadata" in info.value.reason
    else:
        assert parse_metadata(text, 64) == expected


def test_metadata_round_trips_through_format() -> None:
    pairs = (("filename", b"r\xc3\xa9sum\xc3\xa9.pdf"), ("flag", None), ("empty", b""))
    text = format_metadata(pairs)
    # An empty value formats as "key " and parses back as a key without a value.
    assert parse_metadata(text, 1000) == (pairs[0], pairs[1], ("empty", None))


def test_metadata_limit_is_inclusive() -> None:
    assert parse_metadata("a" * 64, 64) == (("a" * 64, None),)


# -- parse_checksum ----------------------------------------------------------------------

SHA1_OF_HELLO = hashlib.sha1(b"hello").digest()
SUPPORTED = frozenset({"sha1", "md5", "crc32c"})

CHECKSUM_CASES = [
    (f"sha1 {b64(SHA1_OF_HELLO)}", ChecksumHeader("sha1", SHA1_OF_HELLO)),
    (f"SHA1 {b64(SHA1_OF_HELLO)}", ChecksumHeader("sha1", SHA1_OF_HELLO)),
    (f"  md5 {b64(b'x' * 16)} ", ChecksumHeader("md5", b"x" * 16)),
    (f"md4 {b64(b'x' * 16)}", BAD),  # unknown algorithm
    (f"sha256 {b64(b'x' * 32)}", BAD),  # not in this server's set
    ("sha1", BAD),
    ("sha1 ", BAD),
    (f" {b64(SHA1_OF_HELLO)}", BAD),
    ("sha1 not*base64", BAD),
    (f"sha1  {b64(SHA1_OF_HELLO)}", BAD),
    (f"sha1 {b64(SHA1_OF_HELLO)} extra", BAD),
]


@pytest.mark.parametrize(
    ("text", "expected"), CHECKSUM_CASES, ids=[repr(c[0])[:24] for c in CHECKSUM_CASES]
)
def test_parse_checksum(text: str, expected: object) -> None:
    if expected is BAD:
        with pytest.raises(UploadError) as info:
            parse_checksum(text, SUPPORTED)
        assert info.value.status == 400
    else:
        assert parse_checksum(text, SUPPORTED) == expected


def test_unknown_checksum_algorithm_is_named() -> None:
    with pytest.raises(UploadError) as info:
        parse_checksum(f"md4 {b64(b'x')}", SUPPORTED)
    assert "md4" in info.value.reason


# -- structured fields (IETF) ------------------------------------------------------------

SF_INTEGER_CASES = [
    (None, None),
    ("0", 0),
    ("5", 5),
    (" 5 ", 5),
    ("005", 5),
    ("-0", 0),  # a valid sf-integer, and not negative
    ("5;a=1", 5),  # parameters are allowed and ignored
    ("999999999999999", 999_999_999_999_999),  # 15 digits: the sf-integer maximum
    ("1000000000000000", None),  # 16 digits: not an sf-integer
    ("-5", None),  # invalid for Upload-Offset: treated as absent
    ("5.0", None),
    ("?1", None),
    ('"5"', None),
    ("", None),
    ("five", None),
    ("5, 6", None),  # a list, not an item
    ("\u0665", None),
]


@pytest.mark.parametrize(
    ("text", "expected"), SF_INTEGER_CASES, ids=[repr(c[0]) for c in SF_INTEGER_CASES]
)
def test_parse_sf_integer(text: str | None, expected: int | None) -> None:
    assert parse_sf_integer(text) == expected


SF_BOOLEAN_CASES = [
    (None, None),
    ("?1", True),
    ("?0", False),
    (" ?1 ", True),
    ("?1;a=b", True),
    ("true", None),  # invalid: treated as absent
    ("false", None),
    ("1", None),
    ("0", None),
    ("?2", None),
    ("?", None),
    ("", None),
    ("?1, ?0", None),
]


@pytest.mark.parametrize(
    ("text", "expected"), SF_BOOLEAN_CASES, ids=[repr(c[0]) for c in SF_BOOLEAN_CASES]
)
def test_parse_sf_boolean(text: str | None, expected: bool | None) -> None:
    assert parse_sf_boolean(text) is expected


# -- parse_range -------------------------------------------------------------------------

UNSATISFIABLE = object()

RANGE_CASES = [
    # (header, size, expected)
    ("bytes=0-4", 10, ByteRange(0, 5)),
    ("bytes=0-0", 10, ByteRange(0, 1)),
    ("bytes=5-", 10, ByteRange(5, 10)),
    ("bytes=9-", 10, ByteRange(9, 10)),
    ("bytes=-3", 10, ByteRange(7, 10)),
    ("bytes=-30", 10, ByteRange(0, 10)),  # suffix longer than the object: all of it
    ("bytes=2-100", 10, ByteRange(2, 10)),  # end clamped to the size
    ("BYTES = 1-2", 10, ByteRange(1, 3)),
    ("bytes=10-", 10, UNSATISFIABLE),
    ("bytes=10-20", 10, UNSATISFIABLE),
    ("bytes=0-", 0, UNSATISFIABLE),
    ("bytes=-5", 0, None),  # suffix of an empty object: ignored, the empty body is served
    ("items=0-1", 10, None),  # another unit: ignored
    ("bytes=0-1,3-4", 10, None),  # several ranges: ignored (we serve one range or all)
    ("bytes=5-2", 10, None),  # last < first: invalid, ignored
    ("bytes=a-b", 10, None),
    ("bytes=-0", 10, UNSATISFIABLE),  # a zero suffix-length is unsatisfiable
    ("bytes=+1-2", 10, None),
    ("bytes=1-+2", 10, None),
    ("bytes=1_0-", 10, None),
    ("bytes=\u0661-", 10, None),
    ("bytes=1 - 2", 10, None),
    ("bytes=1-2-3", 10, None),
    ("bytes=" + "1" * 20 + "-", 10, None),
    ("bytes=9223372036854775807-", 10, UNSATISFIABLE),
    ("bytes=-", 10, None),
    ("bytes=4", 10, None),
    ("bytes", 10, None),
    ("", 10, None),
    ("bytes=" + "9" * 5000 + "-", 10, None),  # beyond int()'s digit limit: ignored
]


@pytest.mark.parametrize(
    ("text", "size", "expected"), RANGE_CASES, ids=[repr(c[0])[:24] for c in RANGE_CASES]
)
def test_parse_range(text: str, size: int, expected: object) -> None:
    if expected is UNSATISFIABLE:
        with pytest.raises(UploadError) as info:
            parse_range(text, size)
        assert info.value.status == 416
        assert ("Content-Range", f"bytes */{size}") in info.value.headers
    else:
        assert parse_range(text, size) == expected


# -- Headers, framing --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "Tus-Resumable",
        "Upload-Offset",
        "Upload-Length",
        "Upload-Defer-Length",
        "Upload-Metadata",
        "Upload-Checksum",
        "Upload-Concat",
        "Upload-Complete",
        "Upload-Incomplete",
        "Upload-Draft-Interop-Version",
        "Content-Length",
        "Content-Type",
        "X-HTTP-Method-Override",
    ],
)
def test_repeated_protocol_header_is_refused(name: str) -> None:
    with pytest.raises(UploadError) as info:
        Headers([(name, "1"), (name.lower(), "1")])
    assert info.value.status == 400
    assert name.lower() in info.value.reason.lower()


def test_repeated_other_headers_are_joined() -> None:
    headers = Headers([("Accept", "a"), ("accept", "b"), ("X-Other", "c")])
    assert headers.get("accept") == "a, b"
    assert headers.get("x-other") == "c"
    assert "x-other" in headers
    assert headers.get("missing") is None


def test_from_asgi_too_many_headers_is_431() -> None:
    limits = Limits(max_header_count=10)
    Headers.from_asgi([(f"x-{i}".encode(), b"v") for i in range(10)], limits)
    with pytest.raises(UploadError) as info:
        Headers.from_asgi([(f"x-{i}".encode(), b"v") for i in range(11)], limits)
    assert info.value.status == 431


def test_from_asgi_too_many_header_bytes_is_431() -> None:
    limits = Limits(max_header_bytes=100)
    Headers.from_asgi([(b"x-a", b"v" * 97)], limits)
    with pytest.raises(UploadError) as info:
        Headers.from_asgi([(b"x-a", b"v" * 98)], limits)
    assert info.value.status == 431


def test_from_asgi_decodes_latin1() -> None:
    headers = Headers.from_asgi([(b"Upload-Metadata", b"k \xe9")], Limits())
    assert headers.get("upload-metadata") == "k \u00e9"


BODY_CASES = [
    ([], Body(None, False)),
    ([("Content-Length", "0")], Body(0, False)),
    ([("Content-Length", "12")], Body(12, True)),
    ([("Transfer-Encoding", "chunked")], Body(None, True)),
    ([("Transfer-Encoding", "gzip, Chunked")], Body(None, True)),
    ([("Transfer-Encoding", "gzip")], Body(None, False)),
    ([("Content-Length", "abc")], BAD),
    ([("Content-Length", "-1")], BAD),
]


@pytest.mark.parametrize(("items", "expected"), BODY_CASES, ids=[str(c[0]) for c in BODY_CASES])
def test_body_of(items: list[tuple[str, str]], expected: object) -> None:
    headers = Headers(items)
    if expected is BAD:
        with pytest.raises(UploadError) as info:
            body_of(headers)
        assert info.value.status == 400
    else:
        assert body_of(headers) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ""),
        ("application/offset+octet-stream", "application/offset+octet-stream"),
        ("Application/Offset+Octet-Stream ; charset=x", "application/offset+octet-stream"),
        (" application/partial-upload;x=1", "application/partial-upload"),
    ],
)
def test_content_type(value: str | None, expected: str) -> None:
    headers = Headers([] if value is None else [("Content-Type", value)])
    assert content_type(headers) == expected
