"""What the client raises."""

from __future__ import annotations


class UploadFailed(Exception):
    """The upload cannot finish: the server refused it, or retries ran out. Names the
    upload URL (or the endpoint, before the upload existed) and the server's reason."""

    def __init__(self, url: str | None, status: int | None, reason: str) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        where = url or "the server"
        code = f" ({status})" if status is not None else ""
        super().__init__(f"{where}{code}: {reason}")


class UploadGone(UploadFailed):
    """The server no longer has the upload (404/410): it expired or was cancelled."""


class Cancelled(Exception):
    """The caller cancelled the upload; what the server acknowledged stays, and a later
    upload of the same file resumes from it."""
