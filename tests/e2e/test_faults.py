"""The network breaks on purpose: cuts mid-body, half-open requests, kill -9, races.

Each test runs a real ``tether serve`` process and talks to it over raw sockets, so it can
stop at any byte.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.support import rawhttp
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
COMMIT_INTERVAL = 4 * MiB


def finish(url: str, data: bytes, chunk: int = 8 * MiB) -> None:
    """Resume from the server's offset until done, as a well-behaved client would."""
    at = rawhttp.offset(url)
    while at < len(data):
        response = rawhttp.patch(url, at, data[at : at + chunk])
        assert response.status == 204, response
        at = int(response.headers["upload-offset"])


def stored(server: ServerProcess, url: str) -> bytes:
    return (server.storage_dir / url.rsplit("/", 1)[1] / "data").read_bytes()


def downloaded(url: str) -> bytes:
    response = rawhttp.request("GET", url)
    assert response.status == 200
    return response.body


def wait_for_offset(url: str, at_least: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    current = rawhttp.offset(url)
    while current < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        current = rawhttp.offset(url)
    return current


def test_cut_mid_patch_keeps_received_bytes_and_resumes(server: ServerProcess) -> None:
    data = os.urandom(24 * MiB)
    url = rawhttp.create(server.url, len(data))
    sent = 13 * MiB + 12345
    with rawhttp.connect(url) as sock:
        rawhttp.send_head(sock, "PATCH", url, rawhttp.patch_headers(0, len(data)))
        sock.sendall(data[:sent])
    time.sleep(0.5)
    # The server commits what it received when it sees the connection end.
    at = wait_for_offset(url, sent - COMMIT_INTERVAL)
    assert sent - COMMIT_INTERVAL <= at <= sent
    finish(url, data)
    assert stored(server, url) == data
    assert downloaded(url) == data


def test_reset_mid_patch_keeps_a_prefix_and_resumes(server: ServerProcess) -> None:
    data = os.urandom(16 * MiB)
    url = rawhttp.create(server.url, len(data))
    with rawhttp.connect(url) as sock:
        rawhttp.send_head(sock, "PATCH", url, rawhttp.patch_headers(0, len(data)))
        sock.sendall(data[: 9 * MiB])
        # RST instead of FIN: whatever sat in buffers is lost, not delivered.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    time.sleep(0.3)
    at = rawhttp.offset(url)
    assert 0 <= at <= 9 * MiB
    finish(url, data)
    assert stored(server, url) == data


def test_half_open_request_is_taken_over_at_once(server: ServerProcess) -> None:
    data = os.urandom(12 * MiB)
    url = rawhttp.create(server.url, len(data))
    hung = rawhttp.connect(url)
    try:
        rawhttp.send_head(hung, "PATCH", url, rawhttp.patch_headers(0, len(data)))
        hung.sendall(data[: 6 * MiB])
        # The client now stops sending but keeps the socket: a half-open request.
        time.sleep(0.5)
        # HEAD takes the upload over from the hung request, which commits what it got.
        at = rawhttp.offset(url)
        assert 6 * MiB - COMMIT_INTERVAL <= at <= 6 * MiB
        started = time.monotonic()
        # A second connection (a retry after a network change) goes on from the offset.
        response = rawhttp.patch(url, at, data[at:])
        elapsed = time.monotonic() - started
        assert response.status == 204, response
        assert int(response.headers["upload-offset"]) == len(data)
        assert elapsed < 1.0, f"takeover took {elapsed:.2f}s"
        # The hung request can no longer change anything, even if it wakes up.
        hung.sendall(data[6 * MiB : 8 * MiB])
    finally:
        hung.close()
    time.sleep(0.2)
    assert rawhttp.offset(url) == len(data)
    assert stored(server, url) == data
    assert downloaded(url) == data


def test_two_concurrent_patches_at_most_one_wins(server: ServerProcess) -> None:
    length = 6 * MiB
    streams = [os.urandom(length), os.urandom(length)]
    url = rawhttp.create(server.url, length)
    socks = [rawhttp.connect(url) for _ in streams]
    results: list[rawhttp.RawResponse | Exception] = [ConnectionError(), ConnectionError()]

    def run(i: int) -> None:
        sock = socks[i]
        try:
            rawhttp.send_head(sock, "PATCH", url, rawhttp.patch_headers(0, length))
            # Interleave the two bodies in small steps so both are streaming at once.
            for start in range(0, length, 256 * 1024):
                sock.sendall(streams[i][start : start + 256 * 1024])
                time.sleep(0.002)
            results[i] = rawhttp.read_response(sock)
        except OSError as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for sock in socks:
        sock.close()
    statuses = [r.status if isinstance(r, rawhttp.RawResponse) else None for r in results]
    # The later request supersedes the earlier one, unless the earlier one finished first;
    # either way at most one wins. (Should the later one start only after the earlier one
    # committed a prefix, it supersedes it and then fails its own offset check: both 409.)
    assert statuses.count(204) <= 1 and set(statuses) <= {204, 409}, statuses
    if 204 not in statuses:
        owner = next(
            streams[i]
            for i, r in enumerate(results)
            if isinstance(r, rawhttp.RawResponse) and b"superseded" in r.body
        )
        finish(url, owner)
    assert rawhttp.offset(url) == length
    assert stored(server, url) in streams
    assert downloaded(url) in streams


def test_kill_9_mid_upload_loses_nothing_acknowledged(tmp_path: Path) -> None:
    size = 256 * MiB
    chunk = 8 * MiB
    data = os.urandom(size)
    proc = ServerProcess(tmp_path / "node").start()
    try:
        url = rawhttp.create(proc.url, size)
        acknowledged = [0]

        def stream() -> None:
            # Sequential PATCHes; each 204 acknowledges everything before its offset.
            try:
                at = 0
                while at < size:
                    response = rawhttp.patch(url, at, data[at : at + chunk])
                    assert response.status == 204
                    at = int(response.headers["upload-offset"])
                    acknowledged[0] = at
            except (OSError, ConnectionError):
                pass  # the server died under us: expected

        sender = threading.Thread(target=stream)
        sender.start()
        deadline = time.monotonic() + 60
        while acknowledged[0] < 64 * MiB + 3 * chunk // 2 and time.monotonic() < deadline:
            time.sleep(0.002)
        assert acknowledged[0] >= 64 * MiB
        before = acknowledged[0]
        proc.kill()  # mid-PATCH: the next chunk is streaming
        sender.join(30)
        before = max(before, acknowledged[0])
        proc = ServerProcess(tmp_path / "node", port=proc.port).start()
        after = rawhttp.offset(url)
        assert after >= before, (after, before)
        finish(url, data, chunk=32 * MiB)
        digest = hashlib.sha256(stored(proc, url)).hexdigest()
        assert digest == hashlib.sha256(data).hexdigest()
    finally:
        proc.stop()


def test_sigterm_commits_streaming_appends_and_exits(tmp_path: Path) -> None:
    data = os.urandom(10 * MiB)
    proc = ServerProcess(tmp_path / "node").start()
    url = rawhttp.create(proc.url, len(data))
    hung = rawhttp.connect(url)
    try:
        rawhttp.send_head(hung, "PATCH", url, rawhttp.patch_headers(0, len(data)))
        hung.sendall(data[: 3 * MiB])
        time.sleep(0.5)  # below one commit interval: nothing committed yet
        started = time.monotonic()
        code = proc.stop(timeout=10)
        assert time.monotonic() - started < 5, "shutdown waited on a hung upload"
        # uvicorn re-raises the signal once it has shut down cleanly.
        assert code in (0, -signal.SIGTERM), proc.log()
        response = rawhttp.read_response(hung)
        assert response.status == 503
    finally:
        hung.close()
    proc = ServerProcess(tmp_path / "node", port=proc.port).start()
    try:
        assert rawhttp.offset(url) == 3 * MiB
        finish(url, data)
        assert stored(proc, url) == data
    finally:
        proc.stop()


@pytest.fixture
def small_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A 12 MiB tmpfs to fill up; skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], capture_output=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_answers_507_and_keeps_earlier_bytes(tmp_path: Path, small_disk: Path) -> None:
    data = os.urandom(20 * MiB)
    proc = ServerProcess(tmp_path / "node", storage_url=f"file://{small_disk}/uploads").start()
    try:
        url = rawhttp.create(proc.url, len(data))
        first = rawhttp.patch(url, 0, data[: 4 * MiB])
        assert first.status == 204
        response = rawhttp.patch(url, 4 * MiB, data[4 * MiB :])
        assert response.status == 507, response
        assert b"insufficient storage" in response.body
        at = rawhttp.offset(url)
        assert 4 * MiB <= at < len(data)
        # The operator makes room; the client resumes and the file is whole.
        subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
        finish(url, data)
        upload_id = url.rsplit("/", 1)[1]
        assert (small_disk / "uploads" / upload_id / "data").read_bytes() == data
    finally:
        proc.stop()


def test_header_flood_is_refused_and_server_survives(server: ServerProcess) -> None:
    many = {f"X-Flood-{i}": "x" * 100 for i in range(300)}
    response = rawhttp.request("POST", server.url, {"Upload-Length": "1", **many})
    assert response.status == 431
    try:
        huge = rawhttp.request("POST", server.url, {"Upload-Length": "1", "X-Big": "y" * 2**20})
        assert 400 <= huge.status < 500
    except ConnectionError:
        pass  # closing the connection on a 1 MiB header is a fine answer too
    url = rawhttp.create(server.url, 3)
    assert rawhttp.patch(url, 0, b"abc").status == 204
