"""What goes over the wire, without the wire: requests the flow asks for, replies it gets,
and the two dialects' headers (tus 1.0, the IETF draft at interop version 6)."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urljoin

from tether.protocol.headers import parse_sf_boolean, parse_sf_integer

TUS_VERSION = "1.0.0"
IETF_VERSION = 6  # what URLSession (iOS 18.1+) and tusd speak
OFFSET_STREAM = "application/offset+octet-stream"
PARTIAL_UPLOAD = "application/partial-upload"
PROTOCOLS = ("tus", "ietf")
# Cheapest first: the checksum exists to catch corruption in transit, not tampering.
CHECKSUM_PREFERENCE = ("crc32c", "sha1", "md5", "sha256", "sha512")

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Slice:
    """Bytes ``[start, start + length)`` of the source, sent as a request body; the driver
    reads them (and, with ``checksum``, adds their ``Upload-Checksum``)."""

    start: int
    length: int
    checksum: str | None = None


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: Headers = ()
    body: Slice | None = None
    purpose: str = ""  # for logs: "create", "append", "resync", ...


@dataclass(frozen=True)
class Reply:
    """A response: status, lower-cased headers, and the start of the body (the server's
    one-line reason on errors)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    text: str = ""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def reason(self) -> str:
        text = " ".join(self.text.split())[:300]
        return text or f"HTTP {self.status}"


@dataclass(frozen=True)
class NetworkFailure:
    """No response: the connection failed, was cut, or timed out."""

    message: str


@dataclass(frozen=True)
class Sleep:
    seconds: float


Step = Request | Sleep
Outcome = Reply | NetworkFailure | None


# -- what the server offers ------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What ``OPTIONS`` advertised; a server that answered nothing useful is assumed to
    offer the tus core and creation only."""

    extensions: frozenset[str] = frozenset({"creation"})
    checksums: frozenset[str] = frozenset()
    max_size: int | None = None
    max_append: int | None = None  # the draft's Upload-Limit max-append-size

    @classmethod
    def from_reply(cls, reply: Reply) -> Capabilities:
        if not 200 <= reply.status < 300:
            return cls()
        extensions = _tokens(reply.header("tus-extension"))
        checksums = _tokens(reply.header("tus-checksum-algorithm"))
        max_size = _uint(reply.header("tus-max-size"))
        limits = _limit_params(reply.header("upload-limit"))
        if max_size is None:
            max_size = limits.get("max-size")
        return cls(
            extensions=extensions or frozenset({"creation"}),
            checksums=checksums if "checksum" in extensions else frozenset(),
            max_size=max_size,
            max_append=limits.get("max-append-size"),
        )

    def offers(self, extension: str) -> bool:
        return extension in self.extensions

    def checksum(self, wanted: str | None) -> str | None:
        """The algorithm to use: ``wanted`` if offered (``"auto"``: the cheapest offered),
        ``None`` if the server offers none or ``wanted`` is ``"none"``."""
        if wanted in (None, "none"):
            return None
        if wanted == "auto":
            return next((a for a in CHECKSUM_PREFERENCE if a in self.checksums), None)
        return wanted if wanted in self.checksums else None


def _tokens(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",") if t.strip())


def _uint(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _limit_params(value: str | None) -> dict[str, int]:
    """``max-size=1000, max-append-size=100`` (an sf-dictionary of integers)."""
    out: dict[str, int] = {}
    for item in (value or "").split(","):
        key, _, number = item.strip().partition("=")
        parsed = _uint(number)
        if key and parsed is not None:
            out[key.strip().lower()] = parsed
    return out


# -- the two dialects ----------------------------------------------------------------------


def encode_metadata(metadata: Mapping[str, str]) -> str:
    return ",".join(
        f"{key} {base64.b64encode(value.encode()).decode('ascii')}" if value else key
        for key, value in metadata.items()
    )


@dataclass(frozen=True)
class Dialect:
    """Builds a dialect's requests and reads its answers."""

    name: str  # "tus" or "ietf"
    extra: Headers = ()  # the user's own headers, e.g. Authorization

    @property
    def is_ietf(self) -> bool:
        return self.name == "ietf"

    def _base(self) -> Headers:
        if self.is_ietf:
            return (("Upload-Draft-Interop-Version", str(IETF_VERSION)), *self.extra)
        return (("Tus-Resumable", TUS_VERSION), *self.extra)

    def options(self, endpoint: str) -> Request:
        return Request("OPTIONS", endpoint, self.extra, purpose="discover")

    def create(
        self,
        endpoint: str,
        length: int,
        *,
        metadata: Mapping[str, str],
        body: Slice | None,
        concat: str | None = None,
    ) -> Request:
        headers = list(self._base())
        if self.is_ietf:
            sent = body.length if body is not None else 0
            headers += [("Upload-Complete", "?1" if sent == length else "?0")]
            headers += [("Upload-Length", str(length))]
        else:
            if concat is None or concat == "partial":
                headers.append(("Upload-Length", str(length)))
            if concat is not None:
                headers.append(("Upload-Concat", concat))
            if metadata:
                headers.append(("Upload-Metadata", encode_metadata(metadata)))
            if body is not None:
                headers.append(("Content-Type", OFFSET_STREAM))
        if body is None:
            headers.append(("Content-Length", "0"))
        return Request("POST", endpoint, tuple(headers), body, purpose="create")

    def append(self, url: str, offset: int, body: Slice, length: int) -> Request:
        """``body`` holds the upload's bytes from ``offset`` (its ``start`` is where they
        are in the source, which differs for the parts of a parallel upload)."""
        headers = [*self._base(), ("Upload-Offset", str(offset))]
        if self.is_ietf:
            complete = offset + body.length == length
            headers += [
                ("Upload-Complete", "?1" if complete else "?0"),
                ("Content-Type", PARTIAL_UPLOAD),
            ]
        else:
            headers.append(("Content-Type", OFFSET_STREAM))
        return Request("PATCH", url, tuple(headers), body, purpose="append")

    def head(self, url: str, purpose: str = "resync") -> Request:
        return Request("HEAD", url, self._base(), purpose=purpose)

    def delete(self, url: str) -> Request:
        return Request("DELETE", url, self._base(), purpose="cancel")

    # -- answers ---------------------------------------------------------------------

    def location(self, reply: Reply, endpoint: str) -> str | None:
        location = reply.header("location")
        return urljoin(endpoint, location) if location else None

    def offset(self, reply: Reply) -> int | None:
        value = reply.header("upload-offset")
        if self.is_ietf:
            return parse_sf_integer(value)
        return _uint(value)

    def complete(self, reply: Reply, length: int) -> bool:
        """Whether the server says the upload has all its bytes."""
        if self.is_ietf:
            flag = parse_sf_boolean(reply.header("upload-complete"))
            if flag is not None:
                return flag
        return self.offset(reply) == length


def retry_after(reply: Reply) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds only; a date is treated as absent)."""
    value = reply.header("retry-after")
    if value is None or not value.strip().isdigit():
        return None
    return float(value.strip())
