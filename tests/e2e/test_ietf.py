"""The IETF draft over a real socket: the 104 interim response and resuming an
interrupted optimistic upload from it."""

from __future__ import annotations

import os
import time

import pytest

from tests.support import rawhttp
from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def read_interim(sock: rawhttp.socket.socket) -> tuple[int, dict[str, str]]:
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(1)
        assert chunk, "connection closed before an interim response"
        buffer += chunk
    lines = buffer.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


@pytest.mark.parametrize("version", [3, 6, 8])
def test_optimistic_upload_cut_midway_resumes_from_104_location(
    server: ServerProcess, version: int
) -> None:
    data = os.urandom(9 * MiB)
    complete = {"Upload-Incomplete": "?0"} if version == 3 else {"Upload-Complete": "?1"}
    with rawhttp.connect(server.url) as sock:
        rawhttp.send_head(
            sock,
            "POST",
            server.url,
            {
                "Upload-Draft-Interop-Version": str(version),
                "Content-Type": "application/octet-stream",
                "Content-Length": str(len(data)),
                **complete,
            },
        )
        status, interim = read_interim(sock)
        assert status == 104
        assert interim["upload-draft-interop-version"] == str(version)
        location = interim["location"]
        assert location.startswith("http://")
        sock.sendall(data[: 5 * MiB])
    ietf = {"Upload-Draft-Interop-Version": str(version)}
    deadline = time.monotonic() + 10
    while True:
        head = rawhttp.request("HEAD", location, ietf)
        assert head.status in (200, 204), head
        at = int(head.headers["upload-offset"])
        if at >= 5 * MiB - 4 * MiB or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    flag = "upload-incomplete" if version == 3 else "upload-complete"
    assert flag in head.headers, head
    assert head.headers[flag] == ("?1" if version == 3 else "?0")
    patch_headers = {
        **ietf,
        "Upload-Offset": str(at),
        **complete,
        "Content-Type": "application/partial-upload"
        if version >= 6
        else "application/offset+octet-stream",
    }
    response = rawhttp.request("PATCH", location, patch_headers, data[at:])
    assert response.status in (200, 201, 204), response
    assert int(response.headers["upload-offset"]) == len(data)
    assert rawhttp.request("GET", location).body == data


def test_no_104_for_tus_requests(server: ServerProcess) -> None:
    with rawhttp.connect(server.url) as sock:
        rawhttp.send_head(
            sock,
            "POST",
            server.url,
            {
                "Tus-Resumable": "1.0.0",
                "Upload-Length": "5",
                "Content-Length": "5",
                "Content-Type": "application/offset+octet-stream",
            },
        )
        sock.sendall(b"hello")
        response = rawhttp.read_response(sock)
    assert response.status == 201
