"""Turn a request line and headers into a command, or raise the error that rejects it.

Pure: no sockets, no clock, no storage. The server routes a path to ``upload_id`` (None
for the creation URL) before calling ``parse_request``.
"""

from __future__ import annotations

from collections.abc import Callable

from tether.protocol import ietf
from tether.protocol.commands import (
    TUS,
    Append,
    Command,
    Create,
    Dialect,
    Download,
    Flavor,
    Head,
    Options,
    Terminate,
)
from tether.protocol.errors import UploadError, bad_request, too_large, unsupported_media_type
from tether.protocol.headers import parse_metadata, parse_sf_integer, parse_uint
from tether.protocol.message import (
    Headers,
    Limits,
    body_of,
    check_length,
    checksum_of,
    content_type,
)

TUS_VERSION = "1.0.0"
TUS_CONTENT_TYPE = "application/offset+octet-stream"


def effective_method(method: str, headers: Headers) -> str:
    override = headers.get("x-http-method-override")
    return override.strip().upper() if override else method.upper()


def detect_dialect(headers: Headers) -> Dialect | None:
    if "tus-resumable" in headers:
        return TUS
    raw = headers.get("upload-draft-interop-version")
    if raw is not None:
        version = parse_sf_integer(raw)
        if version is None or version not in ietf.VERSIONS:
            raise bad_request(
                "unsupported Upload-Draft-Interop-Version; supported: "
                + ", ".join(str(v) for v in sorted(ietf.VERSIONS))
            )
        return Dialect(Flavor.IETF, version)
    return None


def parse_request(
    method: str,
    upload_id: str | None,
    headers: Headers,
    limits: Limits,
    upload_id_from_url: Callable[[str], str | None],
) -> Command:
    method = effective_method(method, headers)
    if method == "OPTIONS":
        # OPTIONS ignores Tus-Resumable entirely (tus 1.0, "OPTIONS").
        return Options(TUS)
    if method == "GET" and upload_id is not None:
        return Download(upload_id, headers.get("range"))
    dialect = detect_dialect(headers)
    if dialect is None:
        raise UploadError(412, "Tus-Resumable 1.0.0 or Upload-Draft-Interop-Version required")
    if dialect.flavor is Flavor.TUS and (headers.get("tus-resumable") or "").strip() != TUS_VERSION:
        raise UploadError(412, f"unsupported Tus-Resumable; this server speaks {TUS_VERSION}")
    if upload_id is None:
        if dialect.is_ietf:
            # The draft: "all request methods that allow content are possible, such as
            # POST, PUT, and PATCH".
            if method in ietf.CREATION_METHODS:
                return ietf.parse_create(dialect, headers, body_of(headers), limits)
            allow = "OPTIONS, " + ", ".join(ietf.CREATION_METHODS)
        elif method == "POST":
            return _tus_create(headers, limits, upload_id_from_url)
        else:
            allow = "OPTIONS, POST"
        raise UploadError(
            405, f"{method} is not allowed on the creation URL", headers=(("Allow", allow),)
        )
    if method == "HEAD":
        return Head(dialect, upload_id)
    if method == "PATCH":
        if dialect.is_ietf:
            return ietf.parse_append(dialect, upload_id, headers, body_of(headers), limits)
        return _tus_append(upload_id, headers, limits)
    if method == "DELETE":
        return Terminate(dialect, upload_id)
    raise UploadError(
        405,
        f"{method} is not allowed on an upload URL",
        headers=(("Allow", "OPTIONS, HEAD, PATCH, DELETE, GET"),),
    )


def _tus_create(
    headers: Headers, limits: Limits, upload_id_from_url: Callable[[str], str | None]
) -> Create:
    body = body_of(headers)
    if body.present and content_type(headers) != TUS_CONTENT_TYPE:
        raise unsupported_media_type(TUS_CONTENT_TYPE)
    metadata = parse_metadata(headers.get("upload-metadata") or "", limits.max_metadata_bytes)
    raw_length = headers.get("upload-length")
    defer = headers.get("upload-defer-length")
    concat = headers.get("upload-concat")
    partial = False
    final_of: tuple[str, ...] | None = None
    if concat is not None:
        partial, final_of = _parse_concat(concat, upload_id_from_url)
    if final_of is not None:
        if raw_length is not None or defer is not None:
            raise bad_request("a final upload must not carry Upload-Length")
        if body.present:
            raise bad_request("a final upload cannot carry a body")
        return Create(TUS, None, metadata, body, final_of=final_of)
    if raw_length is not None and defer is not None:
        raise bad_request("send Upload-Length or Upload-Defer-Length, not both")
    length: int | None
    if raw_length is not None:
        length = check_length(parse_uint("Upload-Length", raw_length), limits)
    elif defer is not None:
        if defer.strip() != "1":
            raise bad_request("Upload-Defer-Length must be 1")
        length = None
    else:
        raise bad_request("Upload-Length or Upload-Defer-Length: 1 required")
    checksum = checksum_of(headers)
    if body.content_length is not None and length is not None and body.content_length > length:
        raise too_large("body is longer than Upload-Length")
    return Create(TUS, length, metadata, body, checksum=checksum, partial=partial)


def _tus_append(upload_id: str, headers: Headers, limits: Limits) -> Append:
    if content_type(headers) != TUS_CONTENT_TYPE:
        raise unsupported_media_type(TUS_CONTENT_TYPE)
    raw_offset = headers.get("upload-offset")
    if raw_offset is None:
        raise bad_request("Upload-Offset required")
    offset = parse_uint("Upload-Offset", raw_offset)
    length: int | None = None
    raw_length = headers.get("upload-length")
    if raw_length is not None:
        length = check_length(parse_uint("Upload-Length", raw_length), limits)
    checksum = checksum_of(headers)
    return Append(TUS, upload_id, offset, body_of(headers), length=length, checksum=checksum)


def _parse_concat(
    value: str, upload_id_from_url: Callable[[str], str | None]
) -> tuple[bool, tuple[str, ...] | None]:
    text = value.strip()
    if text == "partial":
        return True, None
    if text.startswith("final;"):
        urls = text[len("final;") :].split()
        if not urls:
            raise bad_request("Upload-Concat final lists no uploads")
        if len(urls) > 1000:
            raise bad_request("Upload-Concat final lists too many uploads")
        ids: list[str] = []
        for url in urls:
            upload_id = upload_id_from_url(url)
            if upload_id is None:
                raise bad_request(f"Upload-Concat names an upload this server does not own: {url}")
            ids.append(upload_id)
        return False, tuple(ids)
    raise bad_request("Upload-Concat must be 'partial' or 'final;<urls>'")
