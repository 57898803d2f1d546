"""Turn results and errors into response values, per dialect. The one place that maps
errors to statuses and headers."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate

from tether.protocol import ietf
from tether.protocol.checksums import SUPPORTED as CHECKSUMS
from tether.protocol.commands import Dialect
from tether.protocol.errors import UploadError
from tether.protocol.headers import format_metadata
from tether.protocol.requests import TUS_VERSION
from tether.state.base import UploadRecord

Header = tuple[str, str]


@functools.lru_cache(maxsize=64)
def http_date(seconds: int) -> str:
    """An HTTP date; cached because every append in the same second answers the same one."""
    return formatdate(seconds, usegmt=True)


TUS_EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "expiration",
    "checksum",
    "termination",
    "concatenation",
    "concatenation-unfinished",
)


@dataclass
class Response:
    status: int
    headers: list[Header] = field(default_factory=list)
    body: bytes = b""


@dataclass(frozen=True)
class Renderer:
    """Everything a response needs to know about the server, and nothing about I/O."""

    max_size: int | None
    url_for: Callable[[str], str]

    # -- shared pieces -----------------------------------------------------------------

    def _dialect_headers(self, dialect: Dialect | None) -> list[Header]:
        if dialect is None or not dialect.is_ietf:
            return [("Tus-Resumable", TUS_VERSION)]
        return [("Upload-Draft-Interop-Version", str(dialect.version))]

    def upload_limit(self) -> str:
        return f"max-size={self.max_size}" if self.max_size is not None else "min-size=0"

    def _ietf_state(self, dialect: Dialect, record: UploadRecord) -> list[Header]:
        assert dialect.version is not None
        headers = [("Upload-Offset", str(record.offset))]
        if ietf.uses_incomplete_header(dialect.version):
            headers.append(("Upload-Incomplete", "?0" if record.complete else "?1"))
        else:
            headers.append(("Upload-Complete", "?1" if record.complete else "?0"))
        if ietf.has_length_header(dialect.version):
            if record.length is not None:
                headers.append(("Upload-Length", str(record.length)))
            headers.append(("Upload-Limit", self.upload_limit()))
        return headers

    @staticmethod
    def _expires(record: UploadRecord) -> list[Header]:
        if record.expires_at is None or record.complete:
            return []
        return [("Upload-Expires", http_date(int(record.expires_at)))]

    # -- results -----------------------------------------------------------------------

    def options(self) -> Response:
        # tus 1.0 exempts OPTIONS *requests* from Tus-Resumable; its own example response
        # carries the header, and clients such as tus-js-client look for it.
        headers: list[Header] = [
            ("Tus-Resumable", TUS_VERSION),
            ("Tus-Version", TUS_VERSION),
            ("Tus-Extension", ",".join(TUS_EXTENSIONS)),
            ("Tus-Checksum-Algorithm", ",".join(sorted(CHECKSUMS))),
            ("Accept-Patch", f"application/offset+octet-stream, {ietf.PARTIAL_UPLOAD}"),
            ("Upload-Limit", self.upload_limit()),
        ]
        if self.max_size is not None:
            headers.append(("Tus-Max-Size", str(self.max_size)))
        return Response(204, headers)

    def created(self, dialect: Dialect, record: UploadRecord, *, with_body: bool) -> Response:
        headers = self._dialect_headers(dialect)
        headers.append(("Location", self.url_for(record.id)))
        if dialect.is_ietf:
            headers += self._ietf_state(dialect, record)
        elif with_body:
            headers.append(("Upload-Offset", str(record.offset)))
        headers += self._expires(record)
        return Response(201, headers)

    def resumption_supported(self, dialect: Dialect, record: UploadRecord) -> list[Header]:
        """Headers of the 104 interim response (besides ``Location``)."""
        assert dialect.version is not None
        headers = [("Upload-Draft-Interop-Version", str(dialect.version))]
        if ietf.has_length_header(dialect.version):
            headers.append(("Upload-Limit", self.upload_limit()))
        return headers

    def appended(self, dialect: Dialect, record: UploadRecord) -> Response:
        headers = self._dialect_headers(dialect)
        if dialect.is_ietf:
            headers += self._ietf_state(dialect, record)
        else:
            headers.append(("Upload-Offset", str(record.offset)))
        headers += self._expires(record)
        return Response(204, headers)

    def head(self, dialect: Dialect, record: UploadRecord) -> Response:
        headers = self._dialect_headers(dialect)
        headers.append(("Cache-Control", "no-store"))
        if dialect.is_ietf:
            headers += self._ietf_state(dialect, record)
            return Response(204, headers)
        # tus concatenation: a final upload shows no offset until it is assembled.
        if not (record.is_final and not record.complete):
            headers.append(("Upload-Offset", str(record.offset)))
        if record.length is not None:
            headers.append(("Upload-Length", str(record.length)))
        elif not record.is_final:
            headers.append(("Upload-Defer-Length", "1"))
        if record.metadata:
            headers.append(("Upload-Metadata", format_metadata(record.metadata)))
        if record.partial:
            headers.append(("Upload-Concat", "partial"))
        elif record.parts is not None:
            urls = " ".join(self.url_for(p) for p in record.parts)
            headers.append(("Upload-Concat", f"final;{urls}"))
        headers += self._expires(record)
        return Response(200, headers)

    def terminated(self, dialect: Dialect) -> Response:
        return Response(204, self._dialect_headers(dialect))

    # -- errors ------------------------------------------------------------------------

    def error(self, dialect: Dialect | None, error: UploadError) -> Response:
        headers = self._dialect_headers(dialect)
        headers += error.headers
        if error.status == 412:
            headers.append(("Tus-Version", TUS_VERSION))
        if dialect is not None and dialect.is_ietf:
            assert dialect.version is not None
            if error.offset is not None:
                headers.append(("Upload-Offset", str(error.offset)))
                name = (
                    "Upload-Incomplete"
                    if ietf.uses_incomplete_header(dialect.version)
                    else ("Upload-Complete")
                )
                headers.append((name, "?1" if name == "Upload-Incomplete" else "?0"))
            if error.status == 413 and ietf.has_length_header(dialect.version):
                # The draft: a 413 caused by the upload limits MUST carry Upload-Limit.
                headers.append(("Upload-Limit", self.upload_limit()))
            if error.problem is not None and dialect.version >= 6:
                problem: dict[str, object] = {
                    "type": ietf.PROBLEM_BASE + error.problem,
                    "title": error.reason,
                }
                if error.offset is not None:
                    problem["expected-offset"] = error.offset
                if error.provided_offset is not None:
                    problem["provided-offset"] = error.provided_offset
                headers.append(("Content-Type", "application/problem+json"))
                return Response(error.status, headers, json.dumps(problem).encode())
        headers.append(("Content-Type", "text/plain; charset=utf-8"))
        return Response(error.status, headers, error.reason.encode() + b"\n")
