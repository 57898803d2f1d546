"""Commands: what a request asks for, independent of the dialect it was written in."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from tether.protocol.headers import ChecksumHeader

Metadata = tuple[tuple[str, bytes | None], ...]


class Flavor(Enum):
    TUS = "tus"
    IETF = "ietf"


@dataclass(frozen=True)
class Dialect:
    flavor: Flavor
    # IETF interop version (Upload-Draft-Interop-Version); None for tus.
    version: int | None = None

    @property
    def is_ietf(self) -> bool:
        return self.flavor is Flavor.IETF


TUS = Dialect(Flavor.TUS)


@dataclass(frozen=True)
class Body:
    """What the request says about its body; the bytes themselves stream separately."""

    content_length: int | None  # None: chunked or unknown
    present: bool


@dataclass(frozen=True)
class Options:
    dialect: Dialect


@dataclass(frozen=True)
class Create:
    dialect: Dialect
    length: int | None  # None: deferred
    metadata: Metadata
    body: Body
    checksum: ChecksumHeader | None = None
    partial: bool = False
    final_of: tuple[str, ...] | None = None  # upload ids joined by a final upload
    # IETF: whether this request's body completes the upload (Upload-Complete: ?1).
    complete: bool | None = None


@dataclass(frozen=True)
class Append:
    dialect: Dialect
    upload_id: str
    offset: int
    body: Body
    length: int | None = None  # declares the length (deferred length, or IETF Upload-Length)
    checksum: ChecksumHeader | None = None
    complete: bool | None = None  # IETF only; None for tus


@dataclass(frozen=True)
class Head:
    dialect: Dialect
    upload_id: str


@dataclass(frozen=True)
class Terminate:
    dialect: Dialect
    upload_id: str


@dataclass(frozen=True)
class Download:
    upload_id: str
    range: str | None


Command = Options | Create | Append | Head | Terminate | Download
