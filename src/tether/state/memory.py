"""In-memory state store: for tests, and the reference the contract suite is written against."""

from __future__ import annotations

from dataclasses import replace

from tether.state.base import (
    Commit,
    StaleLease,
    UploadExists,
    UploadRecord,
    acquire_record,
    apply_commit,
    is_expired,
)


class MemoryStateStore:
    def __init__(self) -> None:
        self._records: dict[str, UploadRecord] = {}

    def __repr__(self) -> str:
        return "MemoryStateStore()"

    async def create(self, record: UploadRecord) -> None:
        if record.id in self._records:
            raise UploadExists(record.id)
        self._records[record.id] = record

    async def get(self, upload_id: str) -> UploadRecord | None:
        return self._records.get(upload_id)

    async def acquire(self, upload_id: str, *, node: str, client: str | None) -> UploadRecord:
        record = acquire_record(self._records[upload_id], node, client)
        self._records[upload_id] = record
        return record

    async def commit(self, upload_id: str, commit: Commit) -> None:
        current = self._records.get(upload_id)
        if current is None:
            raise StaleLease(upload_id)
        self._records[upload_id] = apply_commit(current, commit)

    async def mark_assembled(self, upload_id: str) -> None:
        current = self._records.get(upload_id)
        if current is not None:
            self._records[upload_id] = replace(current, assembled=True)

    async def delete(self, upload_id: str) -> bool:
        return self._records.pop(upload_id, None) is not None

    async def expire(self, upload_id: str, now: float) -> bool:
        current = self._records.get(upload_id)
        if current is None or not is_expired(current, now):
            return False
        del self._records[upload_id]
        return True

    async def expired(self, now: float, limit: int) -> list[str]:
        found = [r.id for r in self._records.values() if is_expired(r, now)]
        return found[:limit]

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        return None


def open_from_url(url: str, *, durable: bool = False) -> MemoryStateStore:
    return MemoryStateStore()
