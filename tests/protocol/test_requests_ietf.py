"""``parse_request`` for the IETF Resumable Uploads dialect, interop versions 3..9.

Rows name the versions they hold for; each row runs once per version.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.protocol.support import expect, parse
from tether.protocol.commands import (
    TUS,
    Append,
    Body,
    Command,
    Create,
    Dialect,
    Download,
    Flavor,
    Head,
    Options,
    Terminate,
)
from tether.protocol.ietf import PARTIAL_UPLOAD, VERSIONS

ALL = tuple(sorted(VERSIONS))
V3 = (3,)
V4_UP = tuple(v for v in ALL if v >= 4)
V4_V5 = (4, 5)
V3_V5 = (3, 4, 5)
V6_UP = tuple(v for v in ALL if v >= 6)
NO_BODY = Body(None, False)
PARTIAL = ("Content-Type", PARTIAL_UPLOAD)
OCTET = ("Content-Type", "application/offset+octet-stream")


def d(version: int) -> Dialect:
    return Dialect(Flavor.IETF, version)


def iv(version: int) -> tuple[str, str]:
    return ("Upload-Draft-Interop-Version", str(version))


# A row expects an error status, or a command built for the version (the dialect is part
# of the command).
Expected = Command | int
Row = tuple[
    str,
    tuple[int, ...],
    str,
    str | None,
    list[tuple[str, str]],
    Expected | Callable[[int], Command],
]


def create(v: int, length: int | None, body: Body, complete: bool) -> Create:
    return Create(d(v), length, (), body, complete=complete)


def append(v: int, offset: int, body: Body, complete: bool, length: int | None = None) -> Append:
    return Append(d(v), "abc", offset, body, length=length, complete=complete)


ROWS: list[Row] = [
    # -- creation, v3: Upload-Incomplete; absent means complete -------------------------
    (
        "v3-create-complete-by-default",
        V3,
        "POST",
        None,
        [("Content-Length", "5")],
        lambda v: create(v, 5, Body(5, True), True),
    ),
    (
        "v3-create-incomplete",
        V3,
        "POST",
        None,
        [("Upload-Incomplete", "?1"), ("Content-Length", "5")],
        lambda v: create(v, None, Body(5, True), False),
    ),
    (
        "v3-create-incomplete-false",
        V3,
        "POST",
        None,
        [("Upload-Incomplete", "?0")],
        lambda v: create(v, None, NO_BODY, True),
    ),
    (
        "v3-invalid-incomplete-is-absent",
        V3,
        "POST",
        None,
        [("Upload-Incomplete", "true"), ("Content-Length", "0")],
        lambda v: create(v, 0, Body(0, False), True),
    ),
    (
        "v3-ignores-upload-complete",
        V3,
        "POST",
        None,
        [("Upload-Complete", "?0"), ("Content-Length", "2")],
        lambda v: create(v, 2, Body(2, True), True),
    ),
    # -- creation, v4+: Upload-Complete required ------------------------------------------
    (
        "create-careful",
        V4_UP,
        "POST",
        None,
        [("Upload-Complete", "?0")],
        lambda v: create(v, None, NO_BODY, False),
    ),
    (
        "create-careful-empty-body",
        V4_UP,
        "POST",
        None,
        [("Upload-Complete", "?0"), ("Content-Length", "0")],
        lambda v: create(v, None, Body(0, False), False),
    ),
    (
        "create-optimistic",
        V4_UP,
        "POST",
        None,
        [("Upload-Complete", "?1"), ("Content-Length", "7")],
        lambda v: create(v, 7, Body(7, True), True),
    ),
    (
        "create-optimistic-chunked",
        V4_UP,
        "POST",
        None,
        [("Upload-Complete", "?1"), ("Transfer-Encoding", "chunked")],
        lambda v: create(v, None, Body(None, True), True),
    ),
    (
        "create-empty-complete",
        V4_UP,
        "POST",
        None,
        [("Upload-Complete", "?1"), ("Content-Length", "0")],
        lambda v: create(v, 0, Body(0, False), True),
    ),
    ("create-no-upload-complete", V4_UP, "POST", None, [("Content-Length", "3")], 400),
    (
        "create-invalid-upload-complete-is-absent",
        V4_UP,
        "POST",
        None,
        [("Upload-Complete", "true"), ("Content-Length", "3")],
        400,
    ),
    ("create-upload-complete-1", V4_UP, "POST", None, [("Upload-Complete", "1")], 400),
    (
        "create-put",
        V4_UP,
        "PUT",
        None,
        [("Upload-Complete", "?0")],
        lambda v: create(v, None, NO_BODY, False),
    ),
    (
        "create-patch-on-creation-url",
        V4_UP,
        "PATCH",
        None,
        [("Upload-Complete", "?1"), ("Content-Length", "1")],
        lambda v: create(v, 1, Body(1, True), True),
    ),
    (
        "create-body-too-large",
        V4_UP,
        "POST",
        None,
        [("Upload-Complete", "?1"), ("Content-Length", "1001")],
        413,
    ),
    ("get-creation-url", ALL, "GET", None, [], 405),
    ("delete-creation-url", ALL, "DELETE", None, [], 405),
    # -- Upload-Length: v6+ only ---------------------------------------------------------------
    (
        "length-ignored-before-v6",
        V4_V5,
        "POST",
        None,
        [("Upload-Complete", "?0"), ("Upload-Length", "10")],
        lambda v: create(v, None, NO_BODY, False),
    ),
    (
        "length-declared",
        V6_UP,
        "POST",
        None,
        [("Upload-Complete", "?0"), ("Upload-Length", "10")],
        lambda v: create(v, 10, NO_BODY, False),
    ),
    (
        "length-with-partial-body",
        V6_UP,
        "POST",
        None,
        [("Upload-Complete", "?0"), ("Upload-Length", "10"), ("Content-Length", "4")],
        lambda v: create(v, 10, Body(4, True), False),
    ),
    (
        "length-consistent-with-body",
        V6_UP,
        "POST",
        None,
        [("Upload-Complete", "?1"), ("Upload-Length", "5"), ("Content-Length", "5")],
        lambda v: create(v, 5, Body(5, True), True),
    ),
    (
        "length-inconsistent-with-body",
        V6_UP,
        "POST",
        None,
        [("Upload-Complete", "?1"), ("Upload-Length", "5"), ("Content-Length", "4")],
        400,
    ),
    (
        "length-shorter-than-partial-body",
        V6_UP,
        "POST",
        None,
        [("Upload-Complete", "?0"), ("Upload-Length", "3"), ("Content-Length", "4")],
        400,
    ),
    (
        "length-invalid-is-absent",
        V6_UP,
        "POST",
        None,
        [("Upload-Complete", "?0"), ("Upload-Length", "-5")],
        lambda v: create(v, None, NO_BODY, False),
    ),
    (
        "length-not-integer-is-absent",
        V6_UP,
        "POST",
        None,
        [("Upload-Complete", "?1"), ("Upload-Length", "five"), ("Content-Length", "2")],
        lambda v: create(v, 2, Body(2, True), True),
    ),
    (
        "length-over-max",
        V6_UP,
        "POST",
        None,
        [("Upload-Complete", "?0"), ("Upload-Length", "1001")],
        413,
    ),
    # -- append -----------------------------------------------------------------------------
    (
        "append-v3",
        V3,
        "PATCH",
        "abc",
        [("Upload-Offset", "5"), ("Upload-Incomplete", "?1"), ("Content-Length", "2")],
        lambda v: append(v, 5, Body(2, True), False),
    ),
    (
        "append-v3-completes-by-default",
        V3,
        "PATCH",
        "abc",
        [("Upload-Offset", "5"), ("Content-Length", "2")],
        lambda v: append(v, 5, Body(2, True), True),
    ),
    (
        "append-any-content-type-before-v6",
        V3_V5,
        "PATCH",
        "abc",
        [
            OCTET,
            ("Upload-Offset", "0"),
            ("Upload-Complete", "?0"),
            ("Upload-Incomplete", "?1"),
            ("Content-Length", "2"),
        ],
        lambda v: append(v, 0, Body(2, True), False),
    ),
    (
        "append-partial-upload",
        V4_UP,
        "PATCH",
        "abc",
        [PARTIAL, ("Upload-Offset", "5"), ("Upload-Complete", "?0"), ("Content-Length", "2")],
        lambda v: append(v, 5, Body(2, True), False),
    ),
    (
        "append-partial-upload-with-params",
        V6_UP,
        "PATCH",
        "abc",
        [
            ("Content-Type", "Application/Partial-Upload; x=1"),
            ("Upload-Offset", "5"),
            ("Upload-Complete", "?1"),
            ("Content-Length", "2"),
        ],
        lambda v: append(v, 5, Body(2, True), True),
    ),
    (
        "append-no-content-type",
        V6_UP,
        "PATCH",
        "abc",
        [("Upload-Offset", "0"), ("Upload-Complete", "?0"), ("Content-Length", "2")],
        415,
    ),
    (
        "append-tus-content-type",
        V6_UP,
        "PATCH",
        "abc",
        [OCTET, ("Upload-Offset", "0"), ("Upload-Complete", "?0"), ("Content-Length", "2")],
        415,
    ),
    (
        "append-chunked-needs-content-type",
        V6_UP,
        "PATCH",
        "abc",
        [("Upload-Offset", "0"), ("Upload-Complete", "?0"), ("Transfer-Encoding", "chunked")],
        415,
    ),
    (
        "append-empty-body-needs-no-content-type",
        V4_UP,
        "PATCH",
        "abc",
        [("Upload-Offset", "9"), ("Upload-Complete", "?1")],
        lambda v: append(v, 9, NO_BODY, True),
    ),
    (
        "append-declares-length",
        V6_UP,
        "PATCH",
        "abc",
        [
            PARTIAL,
            ("Upload-Offset", "0"),
            ("Upload-Complete", "?0"),
            ("Upload-Length", "8"),
            ("Content-Length", "2"),
        ],
        lambda v: append(v, 0, Body(2, True), False, length=8),
    ),
    (
        "append-length-ignored-before-v6",
        V4_V5,
        "PATCH",
        "abc",
        [("Upload-Offset", "0"), ("Upload-Complete", "?0"), ("Upload-Length", "8")],
        lambda v: append(v, 0, NO_BODY, False),
    ),
    (
        "append-offset-with-parameters",
        V4_UP,
        "PATCH",
        "abc",
        [("Upload-Offset", "7;x=1"), ("Upload-Complete", "?0")],
        lambda v: append(v, 7, NO_BODY, False),
    ),
    (
        "append-no-offset",
        ALL,
        "PATCH",
        "abc",
        [PARTIAL, ("Upload-Complete", "?0"), ("Upload-Incomplete", "?1")],
        400,
    ),
    (
        "append-negative-offset-is-absent",
        ALL,
        "PATCH",
        "abc",
        [("Upload-Offset", "-5"), ("Upload-Complete", "?0"), ("Upload-Incomplete", "?1")],
        400,
    ),
    (
        "append-offset-not-integer",
        ALL,
        "PATCH",
        "abc",
        [("Upload-Offset", "5.0"), ("Upload-Complete", "?0"), ("Upload-Incomplete", "?1")],
        400,
    ),
    ("append-no-upload-complete", V4_UP, "PATCH", "abc", [("Upload-Offset", "0")], 400),
    (
        "append-invalid-upload-complete",
        V4_UP,
        "PATCH",
        "abc",
        [("Upload-Offset", "0"), ("Upload-Complete", "true")],
        400,
    ),
    # -- HEAD, DELETE, GET, OPTIONS ---------------------------------------------------------
    ("head", ALL, "HEAD", "abc", [], lambda v: Head(d(v), "abc")),
    ("delete", ALL, "DELETE", "abc", [], lambda v: Terminate(d(v), "abc")),
    ("get", ALL, "GET", "abc", [], Download("abc", None)),
    ("options", ALL, "OPTIONS", None, [], Options(TUS)),
    ("put-upload", ALL, "PUT", "abc", [], 405),
    # -- repeated headers ------------------------------------------------------------------
    (
        "repeated-upload-complete",
        V4_UP,
        "POST",
        None,
        [("Upload-Complete", "?0"), ("Upload-Complete", "?1")],
        400,
    ),
    (
        "repeated-upload-offset",
        V4_UP,
        "PATCH",
        "abc",
        [("Upload-Offset", "0"), ("Upload-Offset", "0"), ("Upload-Complete", "?0")],
        400,
    ),
]


def _params() -> list[Any]:
    params = []
    for name, versions, method, upload_id, headers, expected in ROWS:
        for v in versions:
            want = expected(v) if callable(expected) else expected
            params.append(
                pytest.param(method, upload_id, [iv(v), *headers], want, id=f"{name}-v{v}")
            )
    return params


@pytest.mark.parametrize(("method", "upload_id", "headers", "expected"), _params())
def test_ietf_parse_request(
    method: str, upload_id: str | None, headers: list[tuple[str, str]], expected: Expected
) -> None:
    expect(method, upload_id, headers, expected)


# -- Upload-Draft-Interop-Version --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "version"),
    [("3", 3), ("6", 6), (" 8 ", 8), ("9", 9), ("6;x=1", 6), ("006", 6)],
)
def test_interop_version_selects_the_dialect(value: str, version: int) -> None:
    command = parse("HEAD", "abc", [("Upload-Draft-Interop-Version", value)])
    assert command == Head(d(version), "abc")


@pytest.mark.parametrize("value", ["1", "2", "10", "-6", "six", "6.0", "", "?1"])
def test_unsupported_interop_version_is_400_naming_the_supported_ones(value: str) -> None:
    error = expect("HEAD", "abc", [("Upload-Draft-Interop-Version", value)], 400)
    assert error is not None
    assert all(str(v) in error.reason for v in ALL)


def test_ietf_requests_need_no_tus_resumable() -> None:
    command = parse("POST", None, [iv(8), ("Upload-Complete", "?0")])
    assert isinstance(command, Create)
    assert command.dialect == d(8)


@pytest.mark.parametrize("v", V6_UP)
def test_inconsistent_length_carries_its_problem_type(v: int) -> None:
    error = expect(
        "POST",
        None,
        [iv(v), ("Upload-Complete", "?1"), ("Upload-Length", "5"), ("Content-Length", "4")],
        400,
    )
    assert error is not None
    assert error.problem == "inconsistent-upload-length"


@pytest.mark.parametrize("v", ALL)
def test_405_on_creation_url_lists_creation_methods(v: int) -> None:
    error = expect("DELETE", None, [iv(v)], 405)
    assert error is not None
    allow = dict(error.headers)["Allow"]
    assert "POST" in allow
    assert "PUT" in allow
