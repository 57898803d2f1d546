"""The resume flow, written once and without sockets.

Each flow is a generator: it yields a ``Request`` (or a ``Sleep``) and is sent back what
came of it (a ``Reply``, a ``NetworkFailure``, or ``None`` after a sleep). ``Client`` and
``AsyncClient`` drive the same generators over httpx; the tests drive them by hand. The
rules, in one place:

- After anything goes wrong the flow asks the server where the upload stands (``HEAD``)
  and continues from the server's offset: it never re-sends a byte the server
  acknowledged, and never trusts its own count over the server's.
- Network errors, timeouts, ``408``, ``423``, ``429``, ``5xx`` are retried after an
  exponential backoff with full jitter (at least ``Retry-After``); ``409`` re-asks at once.
  Attempts without progress and the total time are both bounded.
- ``404``/``410`` (the upload is gone), ``413`` and other ``4xx`` end the upload with an
  ``UploadFailed`` naming the URL and the server's reason; ``460`` (checksum mismatch) is
  re-sent once.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field

from tether.client.errors import UploadFailed, UploadGone
from tether.client.wire import (
    Capabilities,
    Dialect,
    NetworkFailure,
    Outcome,
    Reply,
    Request,
    Sleep,
    Slice,
    Step,
    retry_after,
)

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class Settings:
    chunk_size: int = 8 * MiB
    adaptive: bool = False  # grow chunks while they go fast, shrink after failures
    min_chunk: int = 256 * KiB
    max_chunk: int = 128 * MiB
    retries: int = 10  # attempts in a row without progress before giving up
    total_timeout: float | None = None  # seconds for the whole upload
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    checksum: str | None = "auto"  # per-chunk Upload-Checksum: auto, none, or an algorithm
    creation_with_upload: bool = True
    chunk_seconds: float = 2.0  # the adaptive size aims at chunks this long


@dataclass
class Progress:
    """Where one upload stands, as the flow last learned it; drivers read it for
    progress reports and the resume store."""

    length: int
    url: str | None = None
    offset: int = 0  # acknowledged by the server
    retries: int = 0  # attempts that failed and were retried
    resyncs: int = 0  # times the flow asked the server where it stands after a failure
    resumed: bool = False  # continued an upload that existed before this flow
    forgotten: bool = False  # a remembered URL was gone; the flow started afresh
    regressions: int = 0  # times the server reported less than it had acknowledged


class ChunkPlanner:
    def __init__(self, settings: Settings, limit: int | None) -> None:
        high = settings.max_chunk if limit is None else min(settings.max_chunk, limit)
        self.size = max(1, min(settings.chunk_size, high))
        self.high = max(self.size, high)
        self.low = max(1, min(settings.min_chunk, self.size))  # only adaptive sizes go below
        self.adaptive = settings.adaptive
        self.target = settings.chunk_seconds

    def succeeded(self, sent: int, seconds: float) -> None:
        if not self.adaptive:
            return
        if sent >= self.size and seconds < self.target / 2:
            self.size = min(self.high, self.size * 2)
        elif seconds > self.target * 2:
            self.size = max(self.low, self.size // 2)

    def failed(self) -> None:
        if self.adaptive:
            self.size = max(self.low, self.size // 2)


def _retryable(status: int) -> bool:
    return status in (408, 423, 429) or 500 <= status < 600


class _Retrier:
    """Backoff with full jitter, bounded by attempts without progress and total time."""

    def __init__(
        self,
        settings: Settings,
        clock: Callable[[], float],
        rng: random.Random,
        progress: Progress | None = None,
    ) -> None:
        self.progress = progress
        self.settings = settings
        self.clock = clock
        self.rng = rng
        self.failures = 0
        timeout = settings.total_timeout
        self.deadline = None if timeout is None else clock() + timeout

    def progressed(self) -> None:
        self.failures = 0

    def failed(
        self, url: str | None, why: str, reply: Reply | None = None, *, pause: bool = True
    ) -> Generator[Step, Outcome, None]:
        self.failures += 1
        if self.progress is not None:
            self.progress.retries += 1
        status = reply.status if reply is not None else None
        if self.failures > self.settings.retries:
            raise UploadFailed(url, status, f"gave up after {self.failures} attempts: {why}")
        now = self.clock()
        if self.deadline is not None and now >= self.deadline:
            raise UploadFailed(url, status, f"gave up after {self.settings.total_timeout}s: {why}")
        if not pause:
            return
        ceiling = min(
            self.settings.backoff_cap, self.settings.backoff_base * 2 ** (self.failures - 1)
        )
        delay = self.rng.uniform(0, ceiling)
        asked = retry_after(reply) if reply is not None else None
        if asked is not None:
            delay = max(delay, asked)
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - now))
        if delay > 0:
            yield Sleep(delay)

    def exchange(self, request: Request, url: str | None) -> Generator[Step, Outcome, Reply]:
        """Send ``request`` until a reply comes that retrying would not change: network
        failures and retryable statuses back off and send it again."""
        while True:
            outcome = yield request
            if isinstance(outcome, NetworkFailure):
                yield from self.failed(url, outcome.message)
                continue
            assert outcome is not None
            if _retryable(outcome.status):
                yield from self.failed(url, outcome.reason, outcome)
                continue
            return outcome


def discover(
    dialect: Dialect,
    endpoint: str,
    settings: Settings,
    clock: Callable[[], float],
    rng: random.Random,
) -> Generator[Step, Outcome, Capabilities]:
    """``OPTIONS`` on the endpoint; a server that refuses it offers the core only."""
    retrier = _Retrier(settings, clock, rng)
    reply = yield from retrier.exchange(dialect.options(endpoint), endpoint)
    return Capabilities.from_reply(reply)


@dataclass
class UploadFlow:
    """One upload (or one part of a parallel upload): create or resume, then append until
    the server has every byte. ``source_start`` is where the upload's byte 0 is in the
    source."""

    dialect: Dialect
    endpoint: str
    length: int
    capabilities: Capabilities
    settings: Settings
    clock: Callable[[], float]
    rng: random.Random
    url: str | None = None  # a remembered upload to resume
    metadata: Mapping[str, str] = field(default_factory=dict)
    concat: str | None = None  # "partial" for the parts of a parallel upload
    source_start: int = 0
    on_created: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.progress = Progress(self.length, url=self.url)
        self.planner = ChunkPlanner(self.settings, self.capabilities.max_append)
        self.retrier = _Retrier(self.settings, self.clock, self.rng, self.progress)
        self.checksum = (
            None if self.dialect.is_ietf else self.capabilities.checksum(self.settings.checksum)
        )
        self._checksum_failed_at: int | None = None
        self._complete = False

    def run(self) -> Generator[Step, Outcome, str]:
        progress = self.progress
        if progress.url is not None:
            if (yield from self._resync(remembered=True)):
                progress.resumed = True
            else:
                progress.url = None
                progress.forgotten = True
        if progress.url is None:
            yield from self._create()
        while not self._complete:
            if progress.url is None:
                raise AssertionError("an upload without a URL")
            body = self._slice()
            started = self.clock()
            outcome = yield self.dialect.append(progress.url, progress.offset, body, self.length)
            if not (yield from self._appended(outcome, body, self.clock() - started)):
                progress.resyncs += 1
                yield from self._resync()
        assert progress.url is not None
        return progress.url

    # -- steps -----------------------------------------------------------------------

    def _slice(self) -> Slice:
        size = min(self.planner.size, self.length - self.progress.offset)
        return Slice(self.source_start + self.progress.offset, size, self.checksum)

    def _learned(self, offset: int) -> None:
        """The server says ``offset``: believe it, whatever this flow thought."""
        progress = self.progress
        if offset > progress.offset:
            self.retrier.progressed()
        elif offset < progress.offset:
            progress.regressions += 1
        progress.offset = offset
        self._complete = offset >= self.length

    def _create(self) -> Generator[Step, Outcome, None]:
        progress = self.progress
        body = None
        if (
            self.length > 0
            and self.settings.creation_with_upload
            and not self.dialect.is_ietf
            and self.capabilities.offers("creation-with-upload")
        ):
            body = self._slice()
        request = self.dialect.create(
            self.endpoint, self.length, metadata=self.metadata, body=body, concat=self.concat
        )
        # A creation that failed may have made an upload, but without its URL nobody can
        # continue it: the retry creates another (the server expires the orphan).
        outcome = yield from self.retrier.exchange(request, self.endpoint)
        if outcome.status not in (200, 201):
            raise _refusal(self.endpoint, outcome, "creating the upload")
        url = self.dialect.location(outcome, self.endpoint)
        if url is None:
            raise UploadFailed(self.endpoint, outcome.status, "the server sent no Location")
        progress.url = url
        if self.on_created is not None:
            self.on_created(url)
        offset = self.dialect.offset(outcome)
        if offset is not None or body is None:
            self._learned(offset or 0)
            if self.dialect.is_ietf and self.length == 0:
                self._complete = True
            return
        # The server took the body but did not say how much of it it kept.
        progress.resyncs += 1
        yield from self._resync()
        return

    def _appended(
        self, outcome: Outcome, body: Slice, seconds: float
    ) -> Generator[Step, Outcome, bool]:
        """Handle an append's outcome; False when the flow must ask where it stands."""
        url = self.progress.url
        if isinstance(outcome, NetworkFailure):
            self.planner.failed()
            yield from self.retrier.failed(url, outcome.message)
            return False
        assert outcome is not None
        status = outcome.status
        if 200 <= status < 300:
            offset = self.dialect.offset(outcome)
            if offset is None:
                return False
            self._learned(offset)
            if self.dialect.is_ietf:
                self._complete = self.dialect.complete(outcome, self.length)
            self.planner.succeeded(body.length, seconds)
            return True
        if status == 409:
            # Our offset was stale (an earlier request got through after all): ask again.
            yield from self.retrier.failed(url, outcome.reason, outcome, pause=False)
            return False
        if status == 460:
            if self._checksum_failed_at == self.progress.offset:
                raise UploadFailed(url, status, f"checksum mismatch twice: {outcome.reason}")
            self._checksum_failed_at = self.progress.offset
            yield from self.retrier.failed(url, outcome.reason, outcome, pause=False)
            return False
        if _retryable(status):
            self.planner.failed()
            yield from self.retrier.failed(url, outcome.reason, outcome)
            return False
        raise _refusal(url, outcome, "appending")

    def _resync(self, *, remembered: bool = False) -> Generator[Step, Outcome, bool]:
        """Ask where the upload stands; False if a remembered upload is gone."""
        progress = self.progress
        assert progress.url is not None
        outcome = yield from self.retrier.exchange(self.dialect.head(progress.url), progress.url)
        if remembered and outcome.status in (403, 404, 410):
            return False
        if not 200 <= outcome.status < 300:
            raise _refusal(progress.url, outcome, "asking where the upload stands")
        offset = self.dialect.offset(outcome)
        if offset is None:
            raise UploadFailed(progress.url, outcome.status, "HEAD carried no Upload-Offset")
        self._learned(offset)
        if self.dialect.is_ietf:
            self._complete = self.dialect.complete(outcome, self.length)
        return True


def concatenate(
    dialect: Dialect,
    endpoint: str,
    parts: list[str],
    metadata: Mapping[str, str],
    settings: Settings,
    clock: Callable[[], float],
    rng: random.Random,
) -> Generator[Step, Outcome, str]:
    """Create the final upload that joins finished partial uploads (tus concatenation)."""
    retrier = _Retrier(settings, clock, rng)
    request = dialect.create(
        endpoint, 0, metadata=metadata, body=None, concat="final;" + " ".join(parts)
    )
    outcome = yield from retrier.exchange(request, endpoint)
    if outcome.status not in (200, 201):
        raise _refusal(endpoint, outcome, "joining the parts")
    url = dialect.location(outcome, endpoint)
    if url is None:
        raise UploadFailed(endpoint, outcome.status, "the server sent no Location")
    return url


def _refusal(url: str | None, reply: Reply, doing: str) -> UploadFailed:
    if reply.status in (404, 410):
        return UploadGone(url, reply.status, f"the upload is gone ({doing}): {reply.reason}")
    if reply.status == 413:
        return UploadFailed(url, 413, f"too large for the server: {reply.reason}")
    return UploadFailed(url, reply.status, f"refused while {doing}: {reply.reason}")
