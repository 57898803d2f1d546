"""``Renderer``: the headers, status and body of every response, per dialect."""

from __future__ import annotations

import json
from collections.abc import Callable
from email.utils import parsedate_to_datetime

import pytest

from tether.protocol import errors
from tether.protocol.commands import TUS, Dialect, Flavor
from tether.protocol.errors import UploadError
from tether.protocol.ietf import PROBLEM_BASE, VERSIONS
from tether.protocol.responses import TUS_EXTENSIONS, Renderer, Response
from tether.state.base import UploadRecord

ALL = tuple(sorted(VERSIONS))
EXPIRES_AT = 1_800_000_000.0


def ietf(version: int) -> Dialect:
    return Dialect(Flavor.IETF, version)


def url_for(upload_id: str) -> str:
    return f"/files/{upload_id}"


def renderer(max_size: int | None = None) -> Renderer:
    return Renderer(max_size=max_size, url_for=url_for)


def record(**changes: object) -> UploadRecord:
    fields: dict[str, object] = {"id": "abc", "length": 10, "offset": 0, "expires_at": EXPIRES_AT}
    fields.update(changes)
    return UploadRecord(**fields)  # type: ignore[arg-type]


def names(response: Response) -> list[str]:
    return [name.lower() for name, _ in response.headers]


def header(response: Response, name: str) -> str | None:
    """The one value of ``name``; fails if the header is repeated."""
    values = [v for k, v in response.headers if k.lower() == name.lower()]
    assert len(values) <= 1, f"{name} repeated: {values}"
    return values[0] if values else None


# -- tus: Tus-Resumable on every response ------------------------------------------------

TUS_RESPONSES: list[tuple[str, Callable[[Renderer], Response]]] = [
    ("options", lambda r: r.options()),
    ("created", lambda r: r.created(TUS, record(), with_body=False)),
    ("created-with-body", lambda r: r.created(TUS, record(offset=3), with_body=True)),
    ("appended", lambda r: r.appended(TUS, record(offset=4))),
    ("head", lambda r: r.head(TUS, record())),
    ("terminated", lambda r: r.terminated(TUS)),
    ("error-404", lambda r: r.error(TUS, errors.not_found())),
    ("error-412-no-dialect", lambda r: r.error(None, UploadError(412, "x"))),
    ("error-409", lambda r: r.error(TUS, errors.offset_mismatch(5))),
    ("error-460", lambda r: r.error(TUS, errors.checksum_mismatch())),
]


@pytest.mark.parametrize("render", [p[1] for p in TUS_RESPONSES], ids=[p[0] for p in TUS_RESPONSES])
def test_every_tus_response_carries_tus_resumable(render: Callable[[Renderer], Response]) -> None:
    response = render(renderer())
    assert header(response, "Tus-Resumable") == "1.0.0"


def test_options() -> None:
    response = renderer().options()
    assert response.status == 204
    assert header(response, "Tus-Version") == "1.0.0"
    assert header(response, "Tus-Extension") == ",".join(TUS_EXTENSIONS)
    algorithms = (header(response, "Tus-Checksum-Algorithm") or "").split(",")
    assert "sha1" in algorithms
    assert header(response, "Tus-Max-Size") is None  # no limit, no header
    assert "application/partial-upload" in (header(response, "Accept-Patch") or "")
    assert header(response, "Upload-Limit") == "min-size=0"
    assert response.body == b""


def test_options_with_a_limit() -> None:
    response = renderer(max_size=5000).options()
    assert header(response, "Tus-Max-Size") == "5000"
    assert header(response, "Upload-Limit") == "max-size=5000"


def test_extensions_are_the_implemented_set() -> None:
    # checksum-trailer needs trailers the ASGI server does not expose: never advertised.
    assert "checksum-trailer" not in TUS_EXTENSIONS
    assert set(TUS_EXTENSIONS) == {
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
        "concatenation-unfinished",
    }


# -- tus results -------------------------------------------------------------------------


def test_tus_created() -> None:
    response = renderer().created(TUS, record(), with_body=False)
    assert response.status == 201
    assert header(response, "Location") == "/files/abc"
    assert header(response, "Upload-Offset") is None
    expires = header(response, "Upload-Expires")
    assert expires is not None
    assert parsedate_to_datetime(expires).timestamp() == EXPIRES_AT
    assert expires.endswith("GMT")


def test_tus_created_with_body_has_offset() -> None:
    response = renderer().created(TUS, record(offset=3), with_body=True)
    assert header(response, "Upload-Offset") == "3"


def test_tus_created_without_expiry() -> None:
    response = renderer().created(TUS, record(expires_at=None), with_body=False)
    assert header(response, "Upload-Expires") is None


def test_tus_appended() -> None:
    response = renderer().appended(TUS, record(offset=7))
    assert response.status == 204
    assert header(response, "Upload-Offset") == "7"
    assert header(response, "Upload-Expires") is not None
    assert response.body == b""


def test_tus_complete_upload_has_no_expiry() -> None:
    response = renderer().appended(TUS, record(offset=10))
    assert header(response, "Upload-Offset") == "10"
    assert header(response, "Upload-Expires") is None


def test_tus_head_at_zero() -> None:
    response = renderer().head(TUS, record())
    assert response.status == 200
    assert header(response, "Upload-Offset") == "0"
    assert header(response, "Upload-Length") == "10"
    assert header(response, "Cache-Control") == "no-store"
    assert header(response, "Upload-Defer-Length") is None
    assert header(response, "Upload-Metadata") is None
    assert header(response, "Upload-Concat") is None


def test_tus_head_complete_still_has_offset() -> None:
    response = renderer().head(TUS, record(offset=10))
    assert header(response, "Upload-Offset") == "10"


def test_tus_head_deferred_length() -> None:
    response = renderer().head(TUS, record(length=None, offset=4))
    assert header(response, "Upload-Defer-Length") == "1"
    assert header(response, "Upload-Length") is None
    assert header(response, "Upload-Offset") == "4"


def test_tus_head_metadata() -> None:
    response = renderer().head(TUS, record(metadata=(("filename", b"a.txt"), ("flag", None))))
    assert header(response, "Upload-Metadata") == "filename YS50eHQ=,flag"


def test_tus_head_partial() -> None:
    response = renderer().head(TUS, record(partial=True))
    assert header(response, "Upload-Concat") == "partial"


def test_tus_head_unfinished_final_has_no_offset() -> None:
    response = renderer().head(TUS, record(length=None, parts=("p1", "p2")))
    assert header(response, "Upload-Offset") is None
    assert header(response, "Upload-Defer-Length") is None  # a final never defers
    assert header(response, "Upload-Concat") == "final;/files/p1 /files/p2"


def test_tus_head_unfinished_final_of_known_length() -> None:
    response = renderer().head(TUS, record(length=10, parts=("p1",)))
    assert header(response, "Upload-Offset") is None
    assert header(response, "Upload-Length") == "10"


def test_tus_head_finished_final_has_offset() -> None:
    response = renderer().head(TUS, record(length=10, offset=10, parts=("p1",)))
    assert header(response, "Upload-Offset") == "10"
    assert header(response, "Upload-Concat") == "final;/files/p1"


def test_tus_terminated() -> None:
    response = renderer().terminated(TUS)
    assert response.status == 204
    assert response.body == b""


# -- IETF results ------------------------------------------------------------------------


@pytest.mark.parametrize("v", ALL)
def test_ietf_responses_echo_the_interop_version_not_tus(v: int) -> None:
    r = renderer()
    for response in (
        r.created(ietf(v), record(), with_body=False),
        r.appended(ietf(v), record()),
        r.head(ietf(v), record()),
        r.terminated(ietf(v)),
        r.error(ietf(v), errors.not_found()),
    ):
        assert header(response, "Upload-Draft-Interop-Version") == str(v)
        assert header(response, "Tus-Resumable") is None


@pytest.mark.parametrize("v", ALL)
@pytest.mark.parametrize(
    ("offset", "length", "complete"),
    [(0, 10, False), (4, 10, False), (10, 10, True), (3, None, False)],
)
def test_ietf_head(v: int, offset: int, length: int | None, complete: bool) -> None:
    response = renderer(max_size=100).head(ietf(v), record(offset=offset, length=length))
    assert response.status == 204
    assert header(response, "Cache-Control") == "no-store"
    assert header(response, "Upload-Offset") == str(offset)
    if v == 3:
        assert header(response, "Upload-Incomplete") == ("?0" if complete else "?1")
        assert header(response, "Upload-Complete") is None
    else:
        assert header(response, "Upload-Complete") == ("?1" if complete else "?0")
        assert header(response, "Upload-Incomplete") is None
    if v >= 6:
        assert header(response, "Upload-Limit") == "max-size=100"
        assert header(response, "Upload-Length") == (None if length is None else str(length))
    else:
        assert header(response, "Upload-Limit") is None
        assert header(response, "Upload-Length") is None
    # tus-only headers never leak into the IETF dialect.
    assert header(response, "Upload-Defer-Length") is None
    assert header(response, "Upload-Expires") is None


@pytest.mark.parametrize("v", ALL)
def test_ietf_created(v: int) -> None:
    response = renderer().created(ietf(v), record(offset=2), with_body=True)
    assert response.status == 201
    assert header(response, "Location") == "/files/abc"
    assert header(response, "Upload-Offset") == "2"
    if v >= 6:
        assert header(response, "Upload-Limit") == "min-size=0"


@pytest.mark.parametrize("v", ALL)
def test_ietf_appended_complete(v: int) -> None:
    response = renderer().appended(ietf(v), record(offset=10))
    assert response.status == 204
    if v == 3:
        assert header(response, "Upload-Incomplete") == "?0"
    else:
        assert header(response, "Upload-Complete") == "?1"


# -- errors ------------------------------------------------------------------------------


def assert_one_line(response: Response) -> None:
    assert response.body.endswith(b"\n")
    assert response.body.count(b"\n") == 1
    assert len(response.body) > 1


@pytest.mark.parametrize(
    "error",
    [
        errors.bad_request("bad"),
        errors.not_found(),
        errors.gone(),
        errors.offset_mismatch(3),
        errors.too_large("big"),
        errors.unsupported_media_type("application/offset+octet-stream"),
        errors.checksum_mismatch(),
        UploadError(412, "version"),
        UploadError(431, "headers"),
    ],
    ids=lambda e: str(e.status),
)
def test_tus_errors_are_one_line_text(error: UploadError) -> None:
    response = renderer().error(TUS, error)
    assert response.status == error.status
    assert header(response, "Content-Type") == "text/plain; charset=utf-8"
    assert_one_line(response)
    assert header(response, "Upload-Offset") is None  # tus 409 carries no offset


def test_412_carries_tus_version() -> None:
    for dialect in (None, TUS):
        response = renderer().error(dialect, UploadError(412, "unsupported"))
        assert response.status == 412
        assert header(response, "Tus-Version") == "1.0.0"
        assert header(response, "Tus-Resumable") == "1.0.0"


def test_error_headers_are_passed_on() -> None:
    response = renderer().error(
        TUS, UploadError(416, "range", headers=(("Content-Range", "bytes */9"),))
    )
    assert header(response, "Content-Range") == "bytes */9"
    response = renderer().error(TUS, UploadError(405, "no", headers=(("Allow", "OPTIONS, POST"),)))
    assert header(response, "Allow") == "OPTIONS, POST"


@pytest.mark.parametrize("v", ALL)
def test_ietf_409_has_the_true_offset_and_incomplete(v: int) -> None:
    response = renderer().error(ietf(v), errors.offset_mismatch(12, provided=20))
    assert response.status == 409
    assert header(response, "Upload-Offset") == "12"
    if v == 3:
        assert header(response, "Upload-Incomplete") == "?1"
    else:
        assert header(response, "Upload-Complete") == "?0"
    if v >= 6:
        assert header(response, "Content-Type") == "application/problem+json"
        assert b"\n" not in response.body
        problem = json.loads(response.body)
        assert problem["type"] == PROBLEM_BASE + "mismatching-upload-offset"
        assert problem["expected-offset"] == 12
        assert problem["provided-offset"] == 20
        assert isinstance(problem["title"], str)
    else:
        assert header(response, "Content-Type") == "text/plain; charset=utf-8"
        assert_one_line(response)


def test_ietf_409_without_provided_offset_omits_it() -> None:
    response = renderer().error(ietf(8), errors.offset_mismatch(12))
    problem = json.loads(response.body)
    assert "provided-offset" not in problem
    assert problem["expected-offset"] == 12


@pytest.mark.parametrize("v", (6, 7, 8, 9))
@pytest.mark.parametrize(
    ("error", "problem"),
    [
        (errors.inconsistent_length("x"), "inconsistent-upload-length"),
        (errors.already_complete(), "completed-upload"),
    ],
)
def test_ietf_problem_types(v: int, error: UploadError, problem: str) -> None:
    response = renderer().error(ietf(v), error)
    assert response.status == 400
    assert json.loads(response.body)["type"] == PROBLEM_BASE + problem
    assert header(response, "Upload-Offset") is None


@pytest.mark.parametrize("v", (3, 4, 5))
def test_ietf_before_v6_has_no_problem_json(v: int) -> None:
    response = renderer().error(ietf(v), errors.inconsistent_length("x"))
    assert header(response, "Content-Type") == "text/plain; charset=utf-8"
    assert_one_line(response)


@pytest.mark.parametrize("v", ALL)
def test_ietf_plain_errors_are_one_line(v: int) -> None:
    response = renderer().error(ietf(v), errors.not_found())
    assert response.status == 404
    assert header(response, "Upload-Offset") is None
    assert_one_line(response)


@pytest.mark.parametrize("v", ALL)
def test_ietf_413_carries_upload_limit(v: int) -> None:
    response = renderer(max_size=100).error(ietf(v), errors.too_large("big"))
    assert response.status == 413
    if v >= 6:
        assert header(response, "Upload-Limit") == "max-size=100"
    else:
        assert header(response, "Upload-Limit") is None
