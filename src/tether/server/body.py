"""A request body as a bounded async stream of chunks.

Memory: uvicorn stops reading the socket once 64 KiB of body are buffered (its flow-control
high-water mark), and this reader hands each buffered chunk to the engine, which writes it
before asking for the next one. So a request holds at most ~64 KiB plus one chunk of body in
memory, whatever its size.
"""

from __future__ import annotations

import asyncio

from tether.engine import BodyInterrupted, Interruptible
from tether.protocol import errors
from tether.protocol.errors import UploadError
from tether.server.asgi import Receive


class BodyReader(Interruptible):
    __slots__ = ("_done", "_idle", "_receive", "_stop", "_task", "_waiting", "disconnected")

    def __init__(self, receive: Receive, idle_timeout: float) -> None:
        self._receive = receive
        self._idle = idle_timeout
        self._done = False
        self._stop: UploadError | None = None
        self._task: asyncio.Task[object] | None = None
        self._waiting = False
        self.disconnected = False

    def __aiter__(self) -> BodyReader:
        return self

    async def __anext__(self) -> bytes:
        while True:
            if self._stop is not None:
                raise BodyInterrupted(self._stop)
            if self._done:
                raise StopAsyncIteration
            self._task = asyncio.current_task()
            self._waiting = True
            try:
                async with asyncio.timeout(self._idle):
                    message = await self._receive()
            except TimeoutError:
                raise BodyInterrupted(errors.request_timeout()) from None
            except asyncio.CancelledError:
                task = self._task
                if self._stop is not None and task is not None and task.uncancel() == 0:
                    raise BodyInterrupted(self._stop) from None
                raise
            finally:
                self._waiting = False
            if message["type"] == "http.disconnect":
                self.disconnected = True
                self._done = True
                raise BodyInterrupted(UploadError(400, "client disconnected mid-body"))
            if not message.get("more_body", False):
                self._done = True
            chunk: bytes = message.get("body", b"")
            if chunk:
                return chunk

    def interrupt(self, error: UploadError) -> None:
        if self._stop is None:
            self._stop = error
        if self._waiting and self._task is not None:
            self._task.cancel()
