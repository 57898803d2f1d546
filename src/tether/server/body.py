"""A request body as a bounded async stream of chunks.

Memory: uvicorn stops reading the socket once 64 KiB of body are buffered (its flow-control
high-water mark), and this reader hands each buffered chunk to the engine, which writes it
before asking for the next one. So a request holds at most ~64 KiB plus one chunk of body in
memory, whatever its size.

Bodies the server can splice (``server/protocol.py``) are also a ``DirectSource``: the
engine may have their bytes moved into a segment file by the kernel instead.

Idle timeout: one timer per request, re-armed lazily from the time of the last chunk,
rather than a timeout context per chunk (which cost ~25 µs a chunk on workload A). The same
timer tells the engine, once per silence, that the client has sent nothing for ``quiet``
seconds (``BodyQuiet``), so that it commits what it has while the request waits on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tether.engine import BodyInterrupted, BodyQuiet, Interruptible
from tether.protocol import errors
from tether.protocol.errors import UploadError
from tether.server.asgi import Receive

T = TypeVar("T")
MoveInto = Callable[[int, int], Awaitable[int]]


class BodyReader(Interruptible):
    __slots__ = (
        "_done",
        "_idle",
        "_last",
        "_loop",
        "_move_into",
        "_pausing",
        "_quiet",
        "_quieted",
        "_receive",
        "_stop",
        "_task",
        "_timer",
        "_waiting",
    )

    def __init__(
        self,
        receive: Receive,
        idle_timeout: float,
        splice: dict[str, Any] | None = None,
        *,
        quiet: float | None = None,
    ) -> None:
        self._receive = receive
        self._move_into: MoveInto | None = splice["move_into"] if splice else None
        self._idle = idle_timeout
        self._quiet = quiet or None
        self._quieted = False  # BodyQuiet was raised since the last chunk
        self._pausing = False  # the task was cancelled to raise it
        self._done = False
        self._stop: UploadError | None = None
        self._task: asyncio.Task[object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._waiting = False

    def __aiter__(self) -> BodyReader:
        return self

    def _arm(self) -> None:
        assert self._loop is not None
        deadline = self._last + self._idle
        if self._quiet is not None and not self._quieted:
            deadline = min(deadline, self._last + self._quiet)
        self._timer = self._loop.call_at(deadline, self._watch)

    def _watch(self) -> None:
        assert self._loop is not None
        self._timer = None
        if self._done or self._stop is not None or not self._waiting:
            return  # (the next step arms it again)
        now = self._loop.time()
        if now >= self._last + self._idle:
            self.interrupt(errors.request_timeout())
        elif self._quiet is not None and not self._quieted and now >= self._last + self._quiet:
            self._quieted = self._pausing = True
            assert self._task is not None
            self._task.cancel()
        else:
            self._arm()

    def _finish(self) -> None:
        self._done = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def direct(self) -> bool:
        """Whether ``move_into`` may be used (before any chunk was iterated)."""
        return self._move_into is not None

    async def _wait(self, step: Callable[[], Awaitable[T]]) -> T:
        """Take one step of the body under the idle timer and ``interrupt`` (the step is
        only started if the request has not been stopped)."""
        if self._stop is not None:
            self._finish()
            raise BodyInterrupted(self._stop)
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._last = self._loop.time()
        self._task = asyncio.current_task()  # (the task to cancel: whichever reads)
        if self._timer is None:
            self._arm()
        self._waiting = True
        try:
            result = await step()
        except asyncio.CancelledError:
            task = self._task
            # Cleared whatever happens next: with a cancellation from elsewhere too, the
            # task ends, and a later interrupt() must not think one is still on its way.
            pausing, self._pausing = self._pausing, False
            ours = self._stop is not None or pausing
            if ours and task is not None and task.uncancel() == 0:
                if self._stop is not None:
                    self._finish()
                    raise BodyInterrupted(self._stop) from None
                raise BodyQuiet from None
            raise
        finally:
            self._waiting = False
        self._last = self._loop.time()
        if self._quieted:
            # The timer runs to the idle deadline; a new silence has an earlier one.
            self._quieted = False
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        return result

    async def move_into(self, fd: int, count: int) -> int:
        move_into = self._move_into
        assert move_into is not None
        if self._done and self._stop is None:
            return 0
        try:
            n = await self._wait(lambda: move_into(fd, count))
        except ConnectionError:
            self._finish()
            raise BodyInterrupted(UploadError(400, "client disconnected mid-body")) from None
        if n == 0:
            self._finish()
        return n

    async def __anext__(self) -> bytes:
        while True:
            if self._done and self._stop is None:
                raise StopAsyncIteration
            message = await self._wait(self._receive)
            if message["type"] == "http.disconnect":
                self._finish()
                raise BodyInterrupted(UploadError(400, "client disconnected mid-body"))
            if not message.get("more_body", False):
                self._finish()
            chunk: bytes = message.get("body", b"")
            if chunk:
                return chunk

    def interrupt(self, error: UploadError) -> None:
        if self._stop is None:
            self._stop = error
        # (A cancellation already on its way for BodyQuiet raises this error instead.)
        if self._waiting and self._task is not None and not self._pausing:
            self._task.cancel()

    def close(self) -> None:
        """Cancel the idle timer of a body the engine did not read to its end."""
        self._finish()
