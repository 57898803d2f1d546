"""The error catalogue: every way a request can fail, with the status it maps to.

Protocol and engine code raise these; exactly one place (``tether.protocol.responses``)
turns them into responses. Anything that is not an ``UploadError`` is a bug and becomes
a logged 500.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UploadError(Exception):
    status: int
    reason: str
    # IETF problem type suffix (RFC 9457 "type" under the HTTP problem types registry).
    problem: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # The upload's true offset, where the client needs it to recover (409 in the IETF draft).
    offset: int | None = None
    # The offset the request claimed (the draft's "provided-offset" problem member).
    provided_offset: int | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


def bad_request(reason: str) -> UploadError:
    return UploadError(400, reason)


def not_found(reason: str = "upload not found") -> UploadError:
    return UploadError(404, reason)


def gone(reason: str = "upload expired or was terminated") -> UploadError:
    return UploadError(410, reason)


def offset_mismatch(expected: int, provided: int | None = None) -> UploadError:
    return UploadError(
        409,
        f"Upload-Offset does not match the upload's offset {expected}",
        problem="mismatching-upload-offset",
        offset=expected,
        provided_offset=provided,
    )


def inconsistent_length(reason: str) -> UploadError:
    return UploadError(400, reason, problem="inconsistent-upload-length")


def already_complete() -> UploadError:
    return UploadError(400, "upload is already complete", problem="completed-upload")


def too_large(reason: str) -> UploadError:
    return UploadError(413, reason)


def unsupported_media_type(expected: str) -> UploadError:
    return UploadError(415, f"Content-Type must be {expected}")


def superseded() -> UploadError:
    # A newer request for the same upload took the lease; this one's bytes past the last
    # commit are discarded and the client must ask for the offset again.
    return UploadError(409, "superseded by a newer request for this upload")


def checksum_mismatch() -> UploadError:
    # 460 is tus's own code for "Checksum Mismatch".
    return UploadError(460, "checksum mismatch: chunk discarded")


def storage_full() -> UploadError:
    return UploadError(507, "insufficient storage: bytes up to Upload-Offset are kept")


def request_timeout() -> UploadError:
    return UploadError(408, "request body stalled: received bytes were kept")


def shutting_down() -> UploadError:
    return UploadError(
        503, "server shutting down: received bytes were kept", headers=(("Retry-After", "1"),)
    )
