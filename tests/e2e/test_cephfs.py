"""Three nodes on one CephFS directory, each through its own ceph-fuse mount (its own
client, caches and locks, as on a machine of its own), with PostgreSQL state: the paths of
the file store the churn test does not take there.

- A concatenation: each partial written by two nodes in turn (the second continues the
  segment the first wrote, through another client), completed by a rename on a third, then
  joined by hard links and a manifest on yet another node, and read back through a mount
  that wrote none of it.
- A request left half-open on one node (its client stalls mid-body): its quiet commit
  makes the bytes it received count, another node's HEAD fences it, the rest goes to a
  new segment through another mount, and completion joins two segments written by two
  clients, one still held open by the fenced request.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import churn, rawhttp
from tests.support.cephfs import SharedFS
from tests.support.churn import MiB, Source
from tests.support.server import ServerProcess
from tests.support.stores import fresh_state

pytestmark = [pytest.mark.e2e, pytest.mark.cephfs]


@pytest.fixture
def state_url() -> Iterator[str]:
    with fresh_state("postgresql", "cephfs") as url:
        yield url


@pytest.fixture
def nodes(cephfs: SharedFS, state_url: str, tmp_path: Path) -> Iterator[list[ServerProcess]]:
    name = f"e2e-{secrets.token_hex(6)}"
    procs = [
        ServerProcess(
            tmp_path / f"n{i + 1}",
            node_id=f"n{i + 1}",
            state_url=state_url,
            storage_url=f"file://{mount / name}",
            extra_args=("--quiet-commit", "0.2"),
        )
        for i, mount in enumerate(cephfs.mounts)
    ]
    with contextlib.ExitStack() as running:
        yield [running.enter_context(proc) for proc in procs]


def _upload_path(location: str) -> str:
    return "/files/" + location.rsplit("/", 1)[1]


def _on(node: ServerProcess, location: str) -> str:
    return node.url + location.rsplit("/", 1)[1]


def test_a_concatenation_written_read_and_joined_through_different_mounts(
    nodes: list[ServerProcess],
) -> None:
    n1, n2, n3 = nodes
    parts = [os.urandom(3 * MiB + 5), os.urandom(MiB + 7)]
    locations = []
    for index, data in enumerate(parts):
        # Created on one node, written by the two others in turn.
        first, second = (n2, n3) if index == 0 else (n3, n1)
        created = rawhttp.request(
            "POST", n1.url, {"Upload-Length": str(len(data)), "Upload-Concat": "partial"}
        )
        assert created.status == 201, created
        location = created.headers["location"]
        half = len(data) // 2
        assert rawhttp.patch(_on(first, location), 0, data[:half]).status == 204
        done = rawhttp.patch(_on(second, location), half, data[half:])
        assert done.status == 204, done
        assert done.headers["upload-offset"] == str(len(data))
        locations.append(location)

    final = rawhttp.request(
        "POST",
        n2.url,
        {"Upload-Concat": "final;" + " ".join(_upload_path(loc) for loc in locations)},
    )
    assert final.status == 201, final
    joined = b"".join(parts)
    for node in (n3, n1):
        head = rawhttp.request("HEAD", _on(node, final.headers["location"]))
        assert head.status == 200, head
        assert head.headers["upload-length"] == str(len(joined))
        status, length, digest = churn.get_sha256(_on(node, final.headers["location"]))
        assert (status, length, digest) == (200, len(joined), hashlib.sha256(joined).hexdigest())
    for location, data in zip(locations, parts, strict=True):
        status, length, digest = churn.get_sha256(_on(n1, location))
        assert (status, length, digest) == (200, len(data), hashlib.sha256(data).hexdigest())


def _committed(state_url: str, location: str, expected: int, *, within: float) -> int:
    """The upload's offset in PostgreSQL once it reaches ``expected`` (or after ``within``
    seconds, whatever it is then)."""
    import psycopg
    from psycopg import sql

    from tether.state.postgres import parse_url

    settings = parse_url(state_url)
    upload_id = location.rsplit("/", 1)[1]
    statement = sql.SQL("SELECT received FROM {}.uploads WHERE id = %s").format(
        sql.Identifier(settings.schema)
    )
    deadline = time.monotonic() + within
    with psycopg.connect(settings.conninfo, autocommit=True, connect_timeout=5) as conn:
        while True:
            row = conn.execute(statement, (upload_id,)).fetchone()
            received = int(row[0]) if row else -1
            if received >= expected or time.monotonic() >= deadline:
                return received
            time.sleep(0.05)


def test_a_half_open_request_is_taken_over_through_another_mount(
    nodes: list[ServerProcess], state_url: str
) -> None:
    n1, n2, n3 = nodes
    size, sent = 12 * MiB, 6 * MiB + 12345
    source = Source(20261128, size)
    location = rawhttp.create(n1.url, size)
    stalled = churn.start_stalled_patch(_on(n1, location), source, 0, size, sent)
    try:
        # The quiet commit (0.2 s) makes the received bytes count, as the shared state shows
        # (read directly: a HEAD would fence the request before it went quiet). n2's HEAD
        # then fences n1's request and must find them.
        assert _committed(state_url, location, sent, within=10.0) == sent
        offset = rawhttp.offset(_on(n2, location))
        assert offset == sent
        rest = churn.patch_range(_on(n2, location), source, offset, size)
        assert rest.status == 204, rest
        assert rest.headers["upload-offset"] == str(size)
    finally:
        stalled.close()
    status, length, digest = churn.get_sha256(_on(n3, location))
    assert (status, length, digest) == (200, size, source.sha256())
