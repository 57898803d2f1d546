"""The request body reader: a request stopped from outside starts no further step."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from tether.engine import BodyInterrupted
from tether.protocol.errors import UploadError
from tether.server.body import BodyReader


async def test_a_stopped_body_starts_no_step() -> None:
    started: list[str] = []

    async def receive() -> dict[str, Any]:
        started.append("receive")
        return {"type": "http.request", "body": b"x", "more_body": True}

    async def move_into(fd: int, count: int) -> int:
        started.append("move_into")
        return 0

    reader = BodyReader(receive, 30.0, {"move_into": move_into})
    reader.interrupt(UploadError(409, "superseded"))
    with pytest.raises(BodyInterrupted):
        await reader.move_into(0, 10)
    with pytest.raises(BodyInterrupted):
        await anext(reader)
    gc.collect()  # a coroutine created and never awaited would warn here (an error)
    assert started == []
