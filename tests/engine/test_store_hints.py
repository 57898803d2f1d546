"""What a byte store may ask of the engine: commits at its part boundaries, and no
continuation of a segment whose writer could not settle what it sent."""

from __future__ import annotations

from tests.engine.support import KiB, append, create, final_bytes, pattern
from tether.engine import EngineConfig, UploadService
from tether.state.memory import MemoryStateStore
from tether.storage.base import StorageError
from tether.storage.memory import MemoryByteStore, _MemoryWriter

PART = 24 * KiB


class _Writer:
    def __init__(self, store: PartStore, inner: _MemoryWriter, start: int) -> None:
        self.store = store
        self.inner = inner
        self.position = start

    async def write(self, data: bytes | memoryview) -> None:
        self.position += len(data)
        await self.inner.write(data)

    async def flush(self, durable: bool) -> None:
        self.store.flushed_at.append(self.position)

    async def close(self) -> None:
        if self.store.fail_close:
            raise StorageError("a part upload timed out; whether it landed is unknown")


class PartStore(MemoryByteStore):
    """The memory store, asking for commits every PART bytes of a segment and recording
    where the engine flushed."""

    commit_interval = PART

    def __init__(self) -> None:
        super().__init__()
        self.flushed_at: list[int] = []
        self.origins: list[int | None] = []
        self.fail_close = False

    async def open_segment(  # type: ignore[override]
        self, upload_id: str, segment: str, start: int, *, origin: int | None = None
    ) -> _Writer:
        self.origins.append(origin)
        return _Writer(self, await super().open_segment(upload_id, segment, start), start)


def part_engine(store: PartStore) -> UploadService:
    # The engine's own interval is smaller and its period longer than any test: the store's
    # part boundaries win over both.
    config = EngineConfig(node_id="n1", commit_interval=4 * KiB, commit_period=3600.0)
    return UploadService(MemoryStateStore(), store, config)


async def test_mid_stream_commits_fall_on_the_stores_part_boundaries() -> None:
    store = PartStore()
    engine = part_engine(store)
    source = pattern(100 * KiB, 1)
    upload = await create(engine, len(source))
    # 10 KiB first: the next request continues the segment off the part grid.
    await append(engine, upload.id, 0, source[: 10 * KiB])
    await append(engine, upload.id, 10 * KiB, source[10 * KiB :])
    assert store.flushed_at == [10 * KiB, PART, 2 * PART, 3 * PART, 4 * PART, len(source)]
    assert store.origins == [0, 0]
    assert await final_bytes(engine, upload.id) == source


async def test_a_writer_that_cannot_settle_leaves_no_continuable_tail() -> None:
    store = PartStore()
    engine = part_engine(store)
    source = pattern(30 * KiB, 2)
    upload = await create(engine, len(source))
    store.fail_close = True
    record = await append(engine, upload.id, 0, source[: 10 * KiB])
    assert record.offset == 10 * KiB
    assert record.tail is None
    store.fail_close = False
    record = await append(engine, upload.id, 10 * KiB, source[10 * KiB :])
    # The second request wrote a new segment, starting at upload offset 10 KiB.
    assert [(s.start, s.length) for s in record.segments] == [(0, 10 * KiB), (0, 20 * KiB)]
    assert store.origins == [0, 10 * KiB]
    assert await final_bytes(engine, upload.id) == source
