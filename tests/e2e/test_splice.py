"""Bodies the server moves from the socket into the segment file with splice(2).

Large ``Content-Length`` bodies bypass the HTTP parser (``server/protocol.py``), so what the
parser normally guarantees must still hold: the connection stays usable after the body,
requests pipelined behind it are answered, and a body the server abandons half-way is
discarded so the client still reads its answer.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.support import rawhttp
from tests.support.server import ServerProcess
from tether.server.protocol import SPLICE_MIN, _content_length

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def patch_head(url: str, at: int, length: int) -> bytes:
    path = url.split("/", 3)[3]
    headers = "".join(f"{k}: {v}\r\n" for k, v in rawhttp.patch_headers(at, length).items())
    return f"PATCH /{path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()


def head_request(url: str) -> bytes:
    path = url.split("/", 3)[3]
    return f"HEAD /{path} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n".encode()


def stored_digest(server: ServerProcess, url: str) -> str:
    path = server.storage_dir / url.rsplit("/", 1)[1] / "data"
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_content_length_is_read_only_when_unambiguous() -> None:
    assert _content_length([(b"content-length", b"12")]) == 12
    assert _content_length([]) is None
    assert _content_length([(b"content-length", b"5"), (b"content-length", b"5")]) is None
    assert _content_length([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")]) is None
    assert _content_length([(b"content-length", b"-5")]) is None


def test_one_connection_carries_many_spliced_bodies(server: ServerProcess) -> None:
    chunk = 3 * MiB + 17  # not a multiple of any pipe or commit size
    data = os.urandom(4 * chunk)
    url = rawhttp.create(server.url, len(data))
    with rawhttp.connect(url) as sock:
        for at in range(0, len(data), chunk):
            sock.sendall(patch_head(url, at, chunk) + data[at : at + chunk])
            (response,) = rawhttp.read_responses(sock, 1)
            assert response.status == 204, response
            assert int(response.headers["upload-offset"]) == at + chunk
        sock.sendall(head_request(url))
        response = rawhttp.read_response(sock, head_request=True)
        assert int(response.headers["upload-offset"]) == len(data)
    assert stored_digest(server, url) == hashlib.sha256(data).hexdigest()


def test_requests_pipelined_behind_a_spliced_body_are_answered(server: ServerProcess) -> None:
    data = os.urandom(2 * SPLICE_MIN + 3 * MiB)
    half = len(data) // 2
    url = rawhttp.create(server.url, len(data))
    with rawhttp.connect(url) as sock:
        # Both PATCHes in one stream: the second's head arrives right behind the first body.
        sock.sendall(
            patch_head(url, 0, half)
            + data[:half]
            + patch_head(url, half, len(data) - half)
            + data[half:]
        )
        first, second = rawhttp.read_responses(sock, 2)
    assert (first.status, second.status) == (204, 204), (first, second)
    assert int(second.headers["upload-offset"]) == len(data)
    assert stored_digest(server, url) == hashlib.sha256(data).hexdigest()


def test_abandoned_spliced_body_is_discarded_and_the_connection_reused(
    server: ServerProcess,
) -> None:
    data = os.urandom(6 * MiB)
    url = rawhttp.create(server.url, len(data))
    with rawhttp.connect(url) as sock:
        sock.sendall(patch_head(url, 0, len(data)) + data[: 2 * MiB])
        time.sleep(0.3)
        # Another connection takes the upload over; the first request stops and answers.
        taken = rawhttp.offset(url)
        assert taken <= 2 * MiB
        # Its client, unaware, sends the rest of its body and only then reads the answer.
        sock.sendall(data[2 * MiB :])
        (response,) = rawhttp.read_responses(sock, 1)
        assert response.status == 409, response
        assert b"superseded" in response.body
        # The body's rest was discarded, not parsed as requests: the connection still works.
        sock.sendall(head_request(url))
        head = rawhttp.read_response(sock, head_request=True)
        assert head.status == 200
        assert int(head.headers["upload-offset"]) == taken
        sock.sendall(patch_head(url, taken, len(data) - taken) + data[taken:])
        (done,) = rawhttp.read_responses(sock, 1)
        assert done.status == 204, done
    assert stored_digest(server, url) == hashlib.sha256(data).hexdigest()


def test_chunked_bodies_still_go_through_the_parser(server: ServerProcess) -> None:
    data = os.urandom(2 * MiB + 5)
    url = rawhttp.create(server.url, len(data))
    headers = rawhttp.patch_headers(0, 0)
    del headers["Content-Length"]
    with rawhttp.connect(url) as sock:
        rawhttp.send_head(sock, "PATCH", url, {**headers, "Transfer-Encoding": "chunked"})
        for start in range(0, len(data), 700_000):
            piece = data[start : start + 700_000]
            sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        response = rawhttp.read_response(sock)
    assert response.status == 204, response
    assert stored_digest(server, url) == hashlib.sha256(data).hexdigest()


def test_expect_100_continue_is_answered_before_a_spliced_body(server: ServerProcess) -> None:
    data = os.urandom(SPLICE_MIN + MiB)
    url = rawhttp.create(server.url, len(data))
    with rawhttp.connect(url, timeout=5.0) as sock:
        rawhttp.send_head(
            sock, "PATCH", url, {**rawhttp.patch_headers(0, len(data)), "Expect": "100-continue"}
        )
        interim = sock.recv(1024)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(data)
        (response,) = rawhttp.read_responses(sock, 1)
    assert response.status == 204, response
    assert stored_digest(server, url) == hashlib.sha256(data).hexdigest()


def test_idle_connections_hold_no_pipe_or_duplicate_socket(server: ServerProcess) -> None:
    assert server.process is not None
    fds = Path(f"/proc/{server.process.pid}/fd")

    def pipes() -> int:
        return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("pipe:"))

    before, pipes_before = len(list(fds.iterdir())), pipes()
    data = os.urandom(SPLICE_MIN + 4096)
    socks = []
    try:
        for _ in range(20):
            url = rawhttp.create(server.url, len(data))
            sock = rawhttp.connect(url)
            socks.append(sock)
            sock.sendall(patch_head(url, 0, len(data)) + data)
            (response,) = rawhttp.read_responses(sock, 1)
            assert response.status == 204, response
        # Each idle keep-alive connection costs its socket; the pipe is the process's one.
        assert len(list(fds.iterdir())) <= before + len(socks) + 2
        assert pipes() <= pipes_before + 2
    finally:
        for sock in socks:
            sock.close()
