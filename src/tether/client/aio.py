"""``AsyncClient``: drives the same flows as ``Client`` with an async httpx client (parallel
parts as tasks). Cancel an upload by cancelling its task, or with ``cancel=asyncio.Event``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Generator, Mapping
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


class AsyncClient(ClientBase):
    def __init__(
        self, endpoint: str, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any
    ) -> None:
        super().__init__(endpoint, **kwargs)
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        self.http = httpx.AsyncClient(
            timeout=timeouts(self.timeout), transport=transport, limits=limits
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def upload(
        self,
        path: str | os.PathLike[str],
        *,
        metadata: Mapping[str, str] | None = None,
        parallel: int = 1,
        digest: bool = False,
        on_progress: Callable[[ProgressReport], None] | None = None,
        cancel: asyncio.Event | None = None,
    ) -> UploadResult:
        with self._upload(
            path, metadata=metadata, parallel=parallel, digest=digest, on_progress=on_progress
        ) as up:
            run = _Run(self, up.job, up.source, up.meter, cancel or asyncio.Event(), up.reader)
            result: UploadResult = await run.drive(up.job.run())
        return self._finished(up, result)

    async def status(self, url: str) -> Status:
        reply = await self._simple(self.dialect.head(url, purpose="status"))
        if not 200 <= reply.status < 300:
            raise UploadFailed(url, reply.status, reply.reason)
        return Status.from_reply(url, self.dialect, reply)

    async def cancel(self, url: str) -> None:
        reply = await self._simple(self.dialect.delete(url))
        if reply.status not in (200, 204, 404, 410):
            raise UploadFailed(url, reply.status, reply.reason)

    async def _simple(self, request: Request) -> Reply:
        outcome = await _Run(self, None, None, None, asyncio.Event()).send(request)
        if not isinstance(outcome, Reply):
            raise UploadFailed(request.url, None, str(outcome))
        return outcome


class _Run:
    def __init__(
        self,
        client: AsyncClient,
        job: Job | None,
        source: Source | None,
        meter: Meter | None,
        cancel: asyncio.Event,
        reader: Reader | None = None,
    ) -> None:
        self.reader = reader
        self.client = client
        self.job = job
        self.source = source
        self.meter = meter
        self.cancel = cancel

    async def drive(self, flow: Generator[Any, Any, Any]) -> Any:
        value: Any = None
        while True:
            if self.cancel.is_set():
                flow.close()
                raise Cancelled()
            try:
                step = flow.send(value)
            except StopIteration as stop:
                return stop.value
            value = await self.perform(step)

    async def perform(self, step: Any) -> Any:
        if isinstance(step, Request):
            return await self.send(step)
        if isinstance(step, Sleep):
            try:
                await asyncio.wait_for(self.cancel.wait(), step.seconds)
            except TimeoutError:
                return None
            raise Cancelled()
        if isinstance(step, HashFile):
            assert self.source is not None
            return await asyncio.to_thread(self.source.sha256)
        if isinstance(step, Concurrently):
            tasks = [asyncio.ensure_future(self.drive(flow.run())) for flow in step.flows]
            if step.digest:
                assert self.source is not None
                tasks.append(asyncio.ensure_future(asyncio.to_thread(self.source.sha256)))
            try:
                results = list(await asyncio.gather(*tasks))
                return (results[:-1], results[-1]) if step.digest else results
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        raise TypeError(f"unknown step {step!r}")

    async def send(self, request: Request) -> Outcome:
        body = None
        if request.body is not None:
            assert self.reader is not None
            body = await asyncio.wrap_future(self.reader.take(request.body))
        headers = prepare(request, body)
        content = _stream(body[0], self.meter) if body is not None and body[0] else None
        try:
            response = await self.client.http.request(
                request.method, request.url, headers=headers, content=content
            )
        except NETWORK_ERRORS as exc:
            return network_failure(exc)
        return to_reply(response)


async def _stream(data: bytes, meter: Meter | None) -> AsyncIterator[bytes]:
    for piece in pieces(data, meter):
        yield piece
