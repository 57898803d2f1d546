"""Checksum algorithms for ``Upload-Checksum`` (tus checksum extension)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Protocol

import crc32c


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def digest(self) -> bytes: ...


def _crc32c() -> Hasher:
    hasher: Hasher = crc32c.CRC32CHash()
    return hasher


ALGORITHMS: dict[str, Callable[[], Hasher]] = {
    "sha1": hashlib.sha1,
    "md5": hashlib.md5,
    "sha256": hashlib.sha256,
    "sha512": hashlib.sha512,
    "crc32c": _crc32c,
}

SUPPORTED = frozenset(ALGORITHMS)


def new_hasher(algorithm: str) -> Hasher:
    return ALGORITHMS[algorithm]()
