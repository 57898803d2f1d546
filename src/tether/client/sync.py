"""``Client``: drives the flows with a blocking httpx client (parallel parts on threads)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Generator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any

import httpx

from tether.client.common import ClientBase, Status
from tether.client.errors import Cancelled, UploadFailed
from tether.client.job import Concurrently, HashFile, Job, UploadResult
from tether.client.transport import (
    NETWORK_ERRORS,
    Meter,
    ProgressReport,
    Reader,
    Source,
    network_failure,
    pieces,
    prepare,
    timeouts,
    to_reply,
)
from tether.client.wire import Outcome, Reply, Request, Sleep


class Client(ClientBase):
    """Upload files to a tus 1.0 (or IETF draft) server, resuming whatever happens.

    ``Client("http://host:1080/files/").upload("video.mp4")`` returns once the server has
    every byte, or raises ``UploadFailed``. Thread-safe; close it (or use ``with``)."""

    def __init__(
        self, endpoint: str, *, transport: httpx.BaseTransport | None = None, **kwargs: Any
    ) -> None:
        super().__init__(endpoint, **kwargs)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self.http = httpx.Client(timeout=timeouts(self.timeout), transport=transport, limits=limits)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- the API ---------------------------------------------------------------------

    def upload(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, str] | None = None,
        parallel: int = 1,
        digest: bool = False,
        on_progress: Callable[[ProgressReport], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> UploadResult:
        with self._upload(
            path, metadata=metadata, parallel=parallel, digest=digest, on_progress=on_progress
        ) as up:
            stop = cancel or threading.Event()
            result = _Run(self, up.job, up.source, up.meter, stop, None, up.reader).go()
        return self._finished(up, result)

    def status(self, url: str) -> Status:
        reply = self._simple(self.dialect.head(url, purpose="status"))
        if not 200 <= reply.status < 300:
            raise UploadFailed(url, reply.status, reply.reason)
        return Status.from_reply(url, self.dialect, reply)

    def cancel(self, url: str) -> None:
        reply = self._simple(self.dialect.delete(url))
        if reply.status not in (200, 204, 404, 410):
            raise UploadFailed(url, reply.status, reply.reason)

    def _simple(self, request: Request) -> Reply:
        reply: Reply = _Run(self, None, None, None, threading.Event()).drive(_once(request))
        return reply


def _once(request: Request) -> Generator[Request, Outcome, Reply]:
    outcome = yield request
    if not isinstance(outcome, Reply):
        raise UploadFailed(request.url, None, str(outcome))
    return outcome


class _Run:
    def __init__(
        self,
        client: Client,
        job: Job | None,
        source: Source | None,
        meter: Meter | None,
        cancel: threading.Event,
        outer: threading.Event | None = None,
        reader: Reader | None = None,
    ) -> None:
        self.client = client
        self.job = job
        self.source = source
        self.meter = meter
        self.cancel = cancel
        self.outer = outer  # the caller's cancel, for the parts of a parallel upload
        self.reader = reader

    def cancelled(self) -> bool:
        return self.cancel.is_set() or (self.outer is not None and self.outer.is_set())

    def go(self) -> UploadResult:
        assert self.job is not None
        result: UploadResult = self.drive(self.job.run())
        return result

    def drive(self, flow: Generator[Any, Any, Any]) -> Any:
        value: Any = None
        while True:
            if self.cancelled():
                flow.close()
                raise Cancelled()
            try:
                step = flow.send(value)
            except StopIteration as stop:
                return stop.value
            value = self.perform(step)

    def perform(self, step: Any) -> Any:
        if isinstance(step, Request):
            return self.send(step)
        if isinstance(step, Sleep):
            deadline = time.monotonic() + step.seconds
            while (left := deadline - time.monotonic()) > 0:
                if self.cancel.wait(min(left, 0.1)) or self.cancelled():
                    raise Cancelled()
            return None
        if isinstance(step, HashFile):
            assert self.source is not None
            return self.source.sha256()
        if isinstance(step, Concurrently):
            return self.concurrently(step)
        raise TypeError(f"unknown step {step!r}")

    def send(self, request: Request) -> Outcome:
        body = None
        if request.body is not None:
            assert self.reader is not None
            body = self.reader.take(request.body).result()
        headers = prepare(request, body)
        content = pieces(body[0], self.meter) if body is not None and body[0] else None
        try:
            response = self.client.http.request(
                request.method, request.url, headers=headers, content=content
            )
        except NETWORK_ERRORS as exc:
            return network_failure(exc)
        return to_reply(response)

    def concurrently(self, step: Concurrently) -> Any:
        stop = threading.Event()
        part = _Run(self.client, self.job, self.source, self.meter, stop, self.cancel, self.reader)
        workers = len(step.flows) + int(step.digest)
        with ThreadPoolExecutor(workers, thread_name_prefix="tether-part") as pool:
            futures = [pool.submit(part.drive, flow.run()) for flow in step.flows]
            if step.digest:
                assert self.source is not None
                futures.append(pool.submit(self.source.sha256))
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in done if f.exception() is not None]
            if failed:
                stop.set()  # the other parts stop at their next step
                wait(futures)
                error = failed[0].exception()
                assert error is not None
                raise error
        results = [f.result() for f in futures]
        return (results[:-1], results[-1]) if step.digest else results
