"""Shared pieces for the pure protocol tests: no server, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

import pytest

from tether.protocol.commands import Command
from tether.protocol.errors import UploadError
from tether.protocol.message import Headers, Limits
from tether.protocol.requests import parse_request

BASE = "/files/"
LIMITS = Limits(max_size=1000, max_metadata_bytes=64)

HeaderInput = Mapping[str, str] | Iterable[tuple[str, str]]


def id_from_url(url: str) -> str | None:
    path = urlsplit(url).path
    if not path.startswith(BASE) or len(path) == len(BASE):
        return None
    rest = path[len(BASE) :]
    return None if "/" in rest else rest


def parse(
    method: str,
    upload_id: str | None,
    headers: HeaderInput,
    limits: Limits = LIMITS,
) -> Command:
    """Build ``Headers`` (which may itself refuse) and parse, as the server does."""
    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    return parse_request(method, upload_id, Headers(items), limits, id_from_url)


def expect(
    method: str,
    upload_id: str | None,
    headers: HeaderInput,
    expected: Command | int,
    limits: Limits = LIMITS,
) -> UploadError | None:
    """Parse, and check the result is ``expected``: a command, or an error status.

    Returns the error when one was expected, so a test can look further.
    """
    if isinstance(expected, int):
        with pytest.raises(UploadError) as info:
            parse(method, upload_id, headers, limits)
        assert info.value.status == expected, info.value
        assert info.value.reason and "\n" not in info.value.reason
        return info.value
    assert parse(method, upload_id, headers, limits) == expected
    return None
