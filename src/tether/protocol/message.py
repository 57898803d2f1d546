"""Request framing shared by both dialects: headers, limits, body, content type."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from tether.protocol.checksums import SUPPORTED as CHECKSUMS
from tether.protocol.commands import Body
from tether.protocol.errors import UploadError, bad_request, too_large
from tether.protocol.headers import ChecksumHeader, parse_checksum, parse_uint

# Headers whose repetition would make the request ambiguous: a request that sends two
# Upload-Offset values is refused rather than guessed at.
_SINGLE = frozenset(
    {
        "tus-resumable",
        "upload-offset",
        "upload-length",
        "upload-defer-length",
        "upload-metadata",
        "upload-checksum",
        "upload-concat",
        "upload-complete",
        "upload-incomplete",
        "upload-draft-interop-version",
        "content-length",
        "content-type",
        "x-http-method-override",
    }
)


@dataclass(frozen=True)
class Limits:
    max_size: int | None = None
    max_metadata_bytes: int = 8192
    max_header_count: int = 100
    max_header_bytes: int = 16384


class Headers:
    """Request headers by lower-case name; repeated protocol headers are refused."""

    __slots__ = ("_map",)

    def __init__(self, items: Iterable[tuple[str, str]]) -> None:
        self._map: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            if key in self._map:
                if key in _SINGLE:
                    raise bad_request(f"header {name} is repeated")
                self._map[key] = f"{self._map[key]}, {value}"
            else:
                self._map[key] = value

    @classmethod
    def from_asgi(cls, raw: Iterable[tuple[bytes, bytes]], limits: Limits) -> Headers:
        items: list[tuple[str, str]] = []
        total = 0
        for name, value in raw:
            total += len(name) + len(value)
            if len(items) >= limits.max_header_count or total > limits.max_header_bytes:
                raise UploadError(431, "request headers too large or too many")
            items.append((name.decode("latin-1"), value.decode("latin-1")))
        return cls(items)

    def get(self, name: str) -> str | None:
        return self._map.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._map


def body_of(headers: Headers) -> Body:
    raw = headers.get("content-length")
    if raw is not None:
        length = parse_uint("Content-Length", raw)
        return Body(length, length > 0)
    chunked = "chunked" in (headers.get("transfer-encoding") or "").lower()
    return Body(None, chunked)


def check_length(length: int, limits: Limits) -> int:
    if limits.max_size is not None and length > limits.max_size:
        raise too_large(f"Upload-Length exceeds the maximum size {limits.max_size}")
    return length


def content_type(headers: Headers) -> str:
    return (headers.get("content-type") or "").split(";", 1)[0].strip().lower()


def checksum_of(headers: Headers) -> ChecksumHeader | None:
    raw = headers.get("upload-checksum")
    return None if raw is None else parse_checksum(raw, CHECKSUMS)
