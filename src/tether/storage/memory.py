"""In-memory byte store for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from tether.storage.base import ObjectMissing, Piece

_FINAL = "\0final"


class _MemoryWriter:
    def __init__(self, buffer: bytearray) -> None:
        self._buffer = buffer

    async def write(self, data: bytes | memoryview) -> None:
        self._buffer += data

    async def flush(self, durable: bool) -> None:
        return None

    async def close(self) -> None:
        return None


class MemoryByteStore:
    commit_interval = None
    max_upload_size = None

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytearray] = {}

    def __repr__(self) -> str:
        return "MemoryByteStore()"

    async def open_segment(
        self, upload_id: str, segment: str, start: int, *, origin: int | None = None
    ) -> _MemoryWriter:
        if (upload_id, _FINAL) in self.objects:
            raise ObjectMissing(f"{upload_id} is assembled; segment {segment} is not needed")
        buffer = self.objects.get((upload_id, segment))
        if buffer is None and start == 0:
            buffer = self.objects[(upload_id, segment)] = bytearray()
        if buffer is None or len(buffer) < start:
            raise ObjectMissing(f"segment {segment} of {upload_id} is shorter than {start}")
        del buffer[start:]
        return _MemoryWriter(buffer)

    def _piece(self, piece: Piece) -> bytes:
        key = (piece.upload_id, piece.segment if piece.segment is not None else _FINAL)
        data = self.objects.get(key)
        if data is None or len(data) < piece.start + piece.length:
            raise ObjectMissing(f"{key} lacks bytes for {piece}")
        return bytes(data[piece.start : piece.start + piece.length])

    async def assemble(self, upload_id: str, pieces: Sequence[Piece]) -> None:
        if (upload_id, _FINAL) in self.objects:
            return
        final = bytearray().join(self._piece(p) for p in pieces)
        self.objects[(upload_id, _FINAL)] = final
        for key in [k for k in self.objects if k[0] == upload_id and k[1] != _FINAL]:
            del self.objects[key]

    async def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        data = self.objects.get((upload_id, _FINAL))
        if data is None:
            raise ObjectMissing(upload_id)
        if len(data) < end:
            raise ObjectMissing(f"{upload_id} ends at {len(data)}, before {end}")
        yield bytes(data[start:end])

    async def delete(self, upload_id: str) -> None:
        for key in [k for k in self.objects if k[0] == upload_id]:
            del self.objects[key]

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


def open_from_url(url: str, *, max_size: int | None = None) -> MemoryByteStore:
    return MemoryByteStore()
