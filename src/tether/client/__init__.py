"""tether's upload client: ``Client`` (blocking) and ``AsyncClient`` (asyncio) drive one
resume flow (``tether.client.flow``) against any tus 1.0 server, or the IETF draft.

    from tether.client import Client

    with Client("http://127.0.0.1:1080/files/") as client:
        result = client.upload("video.mp4", metadata={"owner": "ana"})
    print(result.url, result.sha256)
"""

from tether.client.aio import AsyncClient
from tether.client.common import Status
from tether.client.errors import Cancelled, UploadFailed, UploadGone
from tether.client.flow import Settings
from tether.client.job import UploadResult
from tether.client.store import ResumeStore
from tether.client.sync import Client
from tether.client.transport import ProgressReport

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "ProgressReport",
    "ResumeStore",
    "Settings",
    "Status",
    "UploadFailed",
    "UploadGone",
    "UploadResult",
]
