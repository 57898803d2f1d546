"""The IETF Resumable Uploads draft (draft-ietf-httpbis-resumable-upload), as a dialect.

Interop versions and what changed between them (from the drafts' change logs):

====  =========  ==============================================================
 v    drafts     differences that matter to a server
====  =========  ==============================================================
 3    -01        ``Upload-Incomplete`` (inverse of Upload-Complete); no Upload-Length
 4    -02        ``Upload-Complete``; ``?1`` + Content-Length fixes the length
 5    -03        HEAD may answer 200 as well as 204
 6    -04/-05    PATCH needs ``application/partial-upload``; ``Upload-Length``;
                 ``Upload-Limit``
 7    -06..-08   problem type ``inconsistent-upload-length``; Upload-Limit max-age
 8    -09..-11   409 carries the true Upload-Offset; Upload-Limit on HEAD
 9    editor's   newest; treated as 8 (no wire change a server must act on)
====  =========  ==============================================================

Invalid structured-field values are treated as absent, as the draft requires.
"""

from __future__ import annotations

from tether.protocol.commands import Append, Body, Create, Dialect
from tether.protocol.errors import bad_request, inconsistent_length, unsupported_media_type
from tether.protocol.headers import parse_sf_boolean, parse_sf_integer
from tether.protocol.message import Headers, Limits, check_length, checksum_of, content_type

VERSIONS = frozenset({3, 4, 5, 6, 7, 8, 9})
PARTIAL_UPLOAD = "application/partial-upload"
CREATION_METHODS = ("POST", "PUT", "PATCH")
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"


def uses_incomplete_header(version: int) -> bool:
    return version == 3


def has_length_header(version: int) -> bool:
    return version >= 6


def completeness(dialect: Dialect, headers: Headers) -> bool | None:
    """Whether the request says its body completes the upload; None when it says nothing
    valid."""
    assert dialect.version is not None
    if uses_incomplete_header(dialect.version):
        incomplete = parse_sf_boolean(headers.get("upload-incomplete"))
        # Draft -01: an absent Upload-Incomplete means the request completes the upload.
        return True if incomplete is None else not incomplete
    return parse_sf_boolean(headers.get("upload-complete"))


def _length(dialect: Dialect, headers: Headers, limits: Limits) -> int | None:
    assert dialect.version is not None
    if not has_length_header(dialect.version):
        return None
    length = parse_sf_integer(headers.get("upload-length"))
    return None if length is None else check_length(length, limits)


def parse_create(dialect: Dialect, headers: Headers, body: Body, limits: Limits) -> Create:
    complete = completeness(dialect, headers)
    if complete is None:
        raise bad_request("Upload-Complete must be ?0 or ?1")
    length = _length(dialect, headers, limits)
    if complete and body.content_length is not None:
        if length is not None and length != body.content_length:
            raise inconsistent_length("Upload-Length differs from the length of the body")
        length = check_length(body.content_length, limits)
    elif length is not None and body.content_length is not None and body.content_length > length:
        # Refused before the upload exists: a body past Upload-Length could never be kept.
        raise inconsistent_length("the body is longer than Upload-Length")
    return Create(
        dialect,
        length,
        metadata=(),
        body=body,
        checksum=checksum_of(headers),
        complete=complete,
    )


def parse_append(
    dialect: Dialect, upload_id: str, headers: Headers, body: Body, limits: Limits
) -> Append:
    assert dialect.version is not None
    if dialect.version >= 6 and body.present and content_type(headers) != PARTIAL_UPLOAD:
        raise unsupported_media_type(PARTIAL_UPLOAD)
    offset = parse_sf_integer(headers.get("upload-offset"))
    if offset is None:
        raise bad_request("Upload-Offset must be a non-negative integer")
    complete = completeness(dialect, headers)
    if complete is None:
        raise bad_request("Upload-Complete must be ?0 or ?1")
    return Append(
        dialect,
        upload_id,
        offset,
        body,
        length=_length(dialect, headers, limits),
        checksum=checksum_of(headers),
        complete=complete,
    )
