"""Strict parsers for the header values both dialects use.

Each parser either returns a value or raises ``UploadError`` (400/413) naming the header.
Structured-field parsers (IETF dialect) return ``None`` for invalid values instead, because
the draft says an invalid item is treated as absent.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from tether.protocol.errors import UploadError, bad_request

# 2**63 - 1 has 19 digits; longer strings are rejected before int() sees them, so a hostile
# 1 MB run of digits costs nothing.
_UINT = re.compile(r"[0-9]{1,19}")
MAX_INT = 2**63 - 1

# Metadata keys: tus says "MUST NOT contain spaces and commas"; we also refuse control
# characters so keys are safe to log.
_META_KEY = re.compile(r"[!-+\--~]+")
_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")
_BYTE_RANGE = re.compile(r"([0-9]{0,19})-([0-9]{0,19})")


def parse_uint(name: str, value: str) -> int:
    text = value.strip(" \t")
    if not _UINT.fullmatch(text):
        raise bad_request(f"{name} must be a non-negative integer")
    number = int(text)
    if number > MAX_INT:
        raise bad_request(f"{name} is out of range")
    return number


def parse_metadata(value: str, max_bytes: int) -> tuple[tuple[str, bytes | None], ...]:
    """Parse tus ``Upload-Metadata``: comma-separated ``key[ base64value]`` pairs."""
    if len(value) > max_bytes:
        raise UploadError(400, f"Upload-Metadata is longer than {max_bytes} bytes")
    pairs: list[tuple[str, bytes | None]] = []
    seen: set[str] = set()
    if not value.strip():
        return ()
    for raw in value.split(","):
        parts = raw.strip(" \t").split(" ")
        if len(parts) > 2:
            raise bad_request("Upload-Metadata pair has more than one space")
        key = parts[0]
        if not key:
            raise bad_request("Upload-Metadata has an empty key")
        if not _META_KEY.fullmatch(key):
            raise bad_request("Upload-Metadata key has invalid characters")
        if key in seen:
            raise bad_request(f"Upload-Metadata key {key!r} is repeated")
        seen.add(key)
        decoded: bytes | None = None
        if len(parts) == 2:
            decoded = decode_base64(parts[1], "Upload-Metadata value")
        pairs.append((key, decoded))
    return tuple(pairs)


def format_metadata(pairs: tuple[tuple[str, bytes | None], ...]) -> str:
    return ",".join(
        key if val is None else f"{key} {base64.b64encode(val).decode('ascii')}"
        for key, val in pairs
    )


def decode_base64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise bad_request(f"{what} is not valid base64") from None


@dataclass(frozen=True)
class ChecksumHeader:
    algorithm: str
    digest: bytes


def parse_checksum(value: str, supported: frozenset[str]) -> ChecksumHeader:
    parts = value.strip(" \t").split(" ")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise bad_request("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm = parts[0].lower()
    if algorithm not in supported:
        raise bad_request(f"checksum algorithm {parts[0]!r} is not supported")
    return ChecksumHeader(algorithm, decode_base64(parts[1], "Upload-Checksum digest"))


def _sf_bare_item(value: str) -> str:
    # Parameters (";a=b") are allowed on any structured-field item and ignored here.
    return value.split(";", 1)[0].strip(" \t")


def parse_sf_integer(value: str | None) -> int | None:
    """A non-negative sf-integer, or None when absent or invalid (treated as absent)."""
    if value is None:
        return None
    item = _sf_bare_item(value)
    if not _SF_INTEGER.fullmatch(item):
        return None
    number = int(item)
    return number if number >= 0 else None


def parse_sf_boolean(value: str | None) -> bool | None:
    if value is None:
        return None
    item = _sf_bare_item(value)
    if item == "?1":
        return True
    if item == "?0":
        return False
    return None


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # exclusive


def parse_range(value: str, size: int) -> ByteRange | None:
    """A single ``bytes=`` range resolved against ``size``.

    Returns None when the header should be ignored (not bytes, several ranges, garbage),
    and raises 416 when it is a well-formed range that cannot be satisfied (RFC 9110
    14.1.1: a first-pos at or past the end, or a suffix-length of 0).
    """
    unit, _, spec = value.partition("=")
    if unit.strip().lower() != "bytes":
        return None
    # ASCII digits only, at most 19: int() alone would take "+5", "5_0" and other scripts'
    # digits, and a megabyte of digits.
    match = _BYTE_RANGE.fullmatch(spec.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        suffix = int(last)
        if suffix == 0:
            return _unsatisfiable(size)
        # An empty representation satisfies a suffix range but has no byte-range-resp to
        # describe it, so the range is ignored and the (empty) whole is served.
        return ByteRange(max(0, size - suffix), size) if size else None
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range-spec: ignored (RFC 9110 14.2)
    if start >= size:
        return _unsatisfiable(size)
    return ByteRange(start, min(int(last) + 1, size) if last else size)


def _unsatisfiable(size: int) -> ByteRange:
    raise UploadError(416, "range not satisfiable", headers=(("Content-Range", f"bytes */{size}"),))
