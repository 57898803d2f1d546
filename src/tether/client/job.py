"""One file's upload, start to finish, as a generator like the flows it runs: find out what
the server offers, look up the resume store, digest the file, then one upload, or N partial
uploads at once joined by a final one. ``Client`` and ``AsyncClient`` drive it."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.client.errors import UploadGone
from tether.client.flow import MiB, Settings, UploadFlow, concatenate, discover
from tether.client.store import ResumeStore, fingerprint
from tether.client.wire import Capabilities, Dialect, Step

MIN_PART = 5 * MiB  # a parallel part smaller than this is not worth a connection


@dataclass(frozen=True)
class HashFile:
    """Ask the driver for the sha256 (hex) of the whole source."""


@dataclass(frozen=True)
class Concurrently:
    """Ask the driver to run these flows at once and send back their URLs, in order; with
    ``digest``, also to hash the whole source meanwhile: it sends back (URLs, sha256)."""

    flows: tuple[UploadFlow, ...]
    digest: bool = False


JobStep = Step | HashFile | Concurrently


@dataclass(frozen=True)
class UploadResult:
    url: str
    size: int
    sha256: str | None
    resumed: bool  # continued an upload an earlier run started
    retries: int
    parts: tuple[str, ...] = ()  # the partial uploads of a parallel upload
    sent: int = 0  # bytes of bodies put on the wire, re-sends included


@dataclass
class Job:
    path: str
    size: int
    endpoint: str
    dialect: Dialect
    settings: Settings
    store: ResumeStore
    clock: Callable[[], float]
    rng: random.Random
    parallel: int = 1
    metadata: Mapping[str, str] = field(default_factory=dict)
    digest: bool = False  # send the file's sha256 as metadata (tus)
    capabilities: Capabilities | None = None
    flows: list[UploadFlow] = field(default_factory=list)

    @property
    def acknowledged(self) -> int:
        return sum(flow.progress.offset for flow in self.flows)

    def run(self) -> Generator[JobStep, Any, UploadResult]:
        if self.capabilities is None:
            self.capabilities = yield from discover(
                self.dialect, self.endpoint, self.settings, self.clock, self.rng
            )
        caps = self.capabilities
        if caps.max_size is not None and self.size > caps.max_size:
            from tether.client.errors import UploadFailed

            raise UploadFailed(
                self.endpoint, 413, f"{self.size} bytes exceed the server's limit {caps.max_size}"
            )
        parallel = self._parallelism(caps)
        key = fingerprint(
            self.path, endpoint=self.endpoint, protocol=self.dialect.name, parallel=parallel
        )
        entry = self.store.get(key)
        metadata = dict(self.metadata)
        metadata.setdefault("filename", os.path.basename(self.path))
        sha256 = entry.sha256 if entry is not None else None
        # A parallel upload hashes the file while its parts go out, since the digest is
        # only needed for the final upload; a single upload needs it at creation.
        if self.digest and not self.dialect.is_ietf and parallel == 1:
            if sha256 is None:
                sha256 = yield HashFile()
                self.store.update(key, sha256=sha256, path=self.path)
            metadata["sha256"] = sha256
        try:
            if parallel == 1:
                flow = self._flow(
                    self.size,
                    url=entry.url if entry is not None else None,
                    metadata=metadata,
                    on_created=lambda url: self.store.update(key, url=url, path=self.path),
                )
                url = yield from flow.run()
                result = UploadResult(
                    url, self.size, sha256, flow.progress.resumed, self._retries()
                )
            else:
                result = yield from self._parallel(
                    key, parallel, entry.parts if entry else [], metadata, sha256
                )
        except UploadGone:
            self.store.forget(key)
            raise
        self.store.forget(key)
        return result

    def _parallelism(self, caps: Capabilities) -> int:
        if self.parallel <= 1 or self.dialect.is_ietf or not caps.offers("concatenation"):
            return 1
        return max(1, min(self.parallel, self.size // MIN_PART))

    def _flow(self, length: int, **kwargs: Any) -> UploadFlow:
        assert self.capabilities is not None
        flow = UploadFlow(
            self.dialect,
            self.endpoint,
            length,
            self.capabilities,
            self.settings,
            self.clock,
            self.rng,
            **kwargs,
        )
        self.flows.append(flow)
        return flow

    def _retries(self) -> int:
        return sum(flow.progress.retries for flow in self.flows)

    def _parallel(
        self,
        key: str,
        count: int,
        remembered: list[str | None],
        metadata: dict[str, str],
        sha256: str | None,
    ) -> Generator[JobStep, Any, UploadResult]:
        step = self.size // count
        flows = []
        for index in range(count):
            start = index * step
            end = self.size if index == count - 1 else start + step
            flows.append(
                self._flow(
                    end - start,
                    url=remembered[index] if index < len(remembered) else None,
                    concat="partial",
                    source_start=start,
                    on_created=lambda url, i=index: self.store.set_part(key, i, url, count),
                )
            )
        if self.digest and sha256 is None:
            parts, sha256 = yield Concurrently(tuple(flows), digest=True)
            assert sha256 is not None
            self.store.update(key, sha256=sha256)
        else:
            parts = yield Concurrently(tuple(flows))
        if self.digest and sha256 is not None:
            metadata["sha256"] = sha256
        url = yield from concatenate(
            self.dialect, self.endpoint, parts, metadata, self.settings, self.clock, self.rng
        )
        resumed = any(flow.progress.resumed for flow in flows)
        return UploadResult(url, self.size, sha256, resumed, self._retries(), tuple(parts))
