"""Two ``tether serve`` processes sharing one SQLite state file and one data directory:
any node takes any chunk, and a takeover across nodes is immediate. (The cluster stores,
PostgreSQL/Redis and S3, come with the cluster issue; this is the embedded-store case.)"""

from __future__ import annotations

import contextlib
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import rawhttp
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    shared = tmp_path / "shared"
    shared.mkdir()
    procs = [
        ServerProcess(
            tmp_path / f"node{i}",
            node_id=f"node{i}",
            state_url=f"sqlite:///{shared}/state.db",
            storage_url=f"file://{shared}/uploads",
        )
        for i in range(2)
    ]
    with contextlib.ExitStack() as running:
        yield [running.enter_context(proc) for proc in procs]


def test_chunks_alternate_between_nodes_and_addresses(nodes: list[ServerProcess]) -> None:
    rng = random.Random(7)
    data = os.urandom(10 * MiB + 12345)
    url = rawhttp.create(nodes[0].url, len(data))
    path = url.split("/files/", 1)[1]
    at = 0
    hops = 0
    while at < len(data):
        node = nodes[hops % 2]
        source = f"127.0.0.{2 + rng.randrange(3)}"
        size = rng.choice([1, 1000, 300_000, 2 * MiB])
        response = rawhttp.patch(node.url + path, at, data[at : at + size], source=source)
        assert response.status == 204, response
        at = int(response.headers["upload-offset"])
        hops += 1
    for node in nodes:
        assert rawhttp.request("GET", node.url + path).body == data
    # Every append after the first crossed to the other node: the log says so.
    assert f'"node_switches":{hops - 1}' in nodes[(hops - 1) % 2].log()


def test_takeover_across_nodes_is_immediate(nodes: list[ServerProcess]) -> None:
    data = os.urandom(12 * MiB)
    url = rawhttp.create(nodes[0].url, len(data))
    path = url.split("/files/", 1)[1]
    hung = rawhttp.connect(nodes[0].url)
    try:
        rawhttp.send_head(hung, "PATCH", nodes[0].url + path, rawhttp.patch_headers(0, len(data)))
        hung.sendall(data[: 6 * MiB])
        time.sleep(0.5)  # node0 has committed at least one interval and now waits
        started = time.monotonic()
        # HEAD on the other node fences node0's request; its uncommitted bytes are dropped.
        at = rawhttp.offset(nodes[1].url + path)
        response = rawhttp.patch(nodes[1].url + path, at, data[at:])
        elapsed = time.monotonic() - started
        assert response.status == 204, response
        assert elapsed < 1.0, f"takeover across nodes took {elapsed:.2f}s"
        hung.sendall(data[6 * MiB : 8 * MiB])  # the stale request wakes up: changes nothing
    finally:
        hung.close()
    time.sleep(0.3)
    for node in nodes:
        assert rawhttp.offset(node.url + path) == len(data)
        assert rawhttp.request("GET", node.url + path).body == data


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_request_gone_quiet_keeps_what_it_received_for_a_takeover(
    nodes: list[ServerProcess], tmp_path: Path, framing: str
) -> None:
    """A client that lost its network silently (a mobile address change): its request on
    node0 receives nothing more, commits what it has after ``--quiet-commit`` (1 s), and
    the client, back through node1, resumes from there instead of re-sending it. (A body
    with a Content-Length is spliced into the segment; a chunked one is read by parsing.)"""
    data = os.urandom(8 * MiB)
    url = rawhttp.create(nodes[0].url, len(data))
    path = url.split("/files/", 1)[1]
    sent = 6 * MiB + 12345  # not on a commit interval
    hung = rawhttp.connect(nodes[0].url)
    try:
        headers = rawhttp.patch_headers(0, len(data))
        if framing == "chunked":
            del headers["Content-Length"]
            headers["Transfer-Encoding"] = "chunked"
        rawhttp.send_head(hung, "PATCH", nodes[0].url + path, headers)
        if framing == "chunked":
            for at in range(0, sent, MiB):
                piece = data[at : min(at + MiB, sent)]
                hung.sendall(b"%x\r\n%b\r\n" % (len(piece), piece))
        else:
            hung.sendall(data[:sent])
        # Watched in the shared state file: a HEAD would take the upload over.
        state = sqlite3.connect(f"file:{tmp_path / 'shared' / 'state.db'}?mode=ro", uri=True)
        try:
            deadline = time.monotonic() + 10
            received = 0
            while received != sent and time.monotonic() < deadline:
                time.sleep(0.1)
                row = state.execute("SELECT received FROM uploads WHERE id = ?", (path,))
                received = row.fetchone()[0]
        finally:
            state.close()
        assert received == sent
        assert rawhttp.offset(nodes[1].url + path) == sent
        response = rawhttp.patch(nodes[1].url + path, sent, data[sent:])
        assert response.status == 204, response
    finally:
        hung.close()
    assert rawhttp.request("GET", nodes[1].url + path).body == data
