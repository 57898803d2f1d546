"""What ``Client`` and ``AsyncClient`` share besides the flows: settings, the resume store,
what each endpoint offers, and building a job."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tether.client.flow import Settings
from tether.client.job import Job, UploadResult
from tether.client.store import NoStore, ResumeStore
from tether.client.transport import Meter, ProgressReport, Reader, Source
from tether.client.wire import PROTOCOLS, Capabilities, Dialect, Reply


@dataclass(frozen=True)
class Status:
    """Where an upload stands (``tether status``)."""

    url: str
    offset: int | None
    length: int | None
    complete: bool
    metadata: Mapping[str, str]
    expires: str | None

    @classmethod
    def from_reply(cls, url: str, dialect: Dialect, reply: Reply) -> Status:
        import base64

        metadata: dict[str, str] = {}
        for item in (reply.header("upload-metadata") or "").split(","):
            key, _, value = item.strip().partition(" ")
            if key:
                try:
                    metadata[key] = base64.b64decode(value, validate=True).decode(
                        "utf-8", "replace"
                    )
                except ValueError:
                    metadata[key] = value
        offset = dialect.offset(reply)
        raw_length = reply.header("upload-length")
        length = int(raw_length) if raw_length and raw_length.strip().isdigit() else None
        complete = (
            dialect.complete(reply, length)
            if length is not None
            else dialect.is_ietf and dialect.complete(reply, -1)
        )
        return cls(url, offset, length, complete, metadata, reply.header("upload-expires"))


@dataclass
class _Upload:
    """One ``upload()`` call's pieces, the same for both drivers."""

    job: Job
    source: Source
    meter: Meter
    reader: Reader


class ClientBase:
    def __init__(
        self,
        endpoint: str,
        *,
        protocol: str = "tus",
        headers: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        settings: Settings | None = None,
        resume: bool | ResumeStore = True,
        seed: int | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        if not endpoint.endswith("/"):
            endpoint += "/"
        self.endpoint = endpoint
        self.dialect = Dialect(protocol, tuple((headers or {}).items()))
        self.timeout = timeout
        self.settings = settings or Settings()
        if isinstance(resume, ResumeStore):
            self.store = resume
        else:
            self.store = ResumeStore() if resume else NoStore()
        self.rng = random.Random(seed)
        self.clock = time.monotonic
        self.capabilities: Capabilities | None = None

    @contextlib.contextmanager
    def _upload(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, str] | None,
        parallel: int,
        digest: bool,
        on_progress: Callable[[ProgressReport], None] | None,
    ) -> Iterator[_Upload]:
        source = Source(path)
        try:
            job = self._job(path, source.size, metadata=metadata, parallel=parallel, digest=digest)
            meter = Meter(source.size, lambda: job.acknowledged, on_progress)
            with ThreadPoolExecutor(max(2, parallel + 1), thread_name_prefix="tether-read") as pool:
                yield _Upload(job, source, meter, Reader(source, pool, parallel))
        finally:
            source.close()

    def _finished(self, upload: _Upload, result: UploadResult) -> UploadResult:
        self.capabilities = upload.job.capabilities
        upload.meter.report(force=True)
        return dataclasses.replace(result, sent=upload.meter.sent)

    def _job(
        self,
        path: str | os.PathLike[str],
        size: int,
        *,
        metadata: Mapping[str, str] | None,
        parallel: int,
        digest: bool,
    ) -> Job:
        return Job(
            path=os.fspath(path),
            size=size,
            endpoint=self.endpoint,
            dialect=self.dialect,
            settings=self.settings,
            store=self.store,
            clock=self.clock,
            rng=self.rng,
            parallel=parallel,
            metadata=dict(metadata or {}),
            digest=digest,
            capabilities=self.capabilities,
        )
