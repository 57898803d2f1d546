"""A minimal HTTP/1.1 client on raw sockets, for tests that must cut, stall or race
connections at byte granularity (no library lets a test do that)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

TUS = {"Tus-Resumable": "1.0.0"}


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def connect(url: str, source: str | None = None, timeout: float = 30.0) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection(
        (parts.hostname or "127.0.0.1", parts.port or 80),
        timeout=timeout,
        source_address=(source, 0) if source else None,
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_head(sock: socket.socket, method: str, url: str, headers: dict[str, str]) -> None:
    parts = urlsplit(url)
    lines = [f"{method} {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def read_head(sock: socket.socket, buffer: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """A response's status and headers (names lower-cased), and the bytes read past them."""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("connection closed before a response")
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, rest


def read_response(sock: socket.socket, head_request: bool = False) -> RawResponse:
    return read_responses(sock, 1, head_request)[0]


def read_responses(
    sock: socket.socket, count: int, head_request: bool = False
) -> list[RawResponse]:
    """Read ``count`` responses from one connection; bytes of a later response that arrive
    with an earlier one are kept for it (pipelined requests)."""
    buffer = b""
    responses = []
    while len(responses) < count:
        status, headers, buffer = read_head(sock, buffer)
        length = 0 if head_request else int(headers.get("content-length", "0"))
        while len(buffer) < length:
            data = sock.recv(65536)
            if not data:
                break
            buffer += data
        body, buffer = buffer[:length], buffer[length:]
        responses.append(RawResponse(status, headers, body))
    return responses


def request(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    source: str | None = None,
) -> RawResponse:
    headers = headers or {}
    ietf = "Upload-Draft-Interop-Version" in headers
    all_headers = {**({} if ietf else TUS), **headers}
    if body or method in ("PATCH", "POST"):
        all_headers.setdefault("Content-Length", str(len(body)))
    with connect(url, source) as sock:
        send_head(sock, method, url, all_headers)
        if body:
            sock.sendall(body)
        return read_response(sock, head_request=method == "HEAD")


def create(base_url: str, length: int, source: str | None = None) -> str:
    response = request("POST", base_url, {"Upload-Length": str(length)}, source=source)
    assert response.status == 201, response
    return response.headers["location"]


def offset(url: str) -> int:
    response = request("HEAD", url)
    assert response.status == 200, response
    return int(response.headers["upload-offset"])


def patch(url: str, at: int, body: bytes, source: str | None = None) -> RawResponse:
    return request(
        "PATCH",
        url,
        {"Upload-Offset": str(at), "Content-Type": "application/offset+octet-stream"},
        body,
        source=source,
    )


def patch_headers(at: int, length: int) -> dict[str, str]:
    return {
        **TUS,
        "Upload-Offset": str(at),
        "Content-Type": "application/offset+octet-stream",
        "Content-Length": str(length),
    }
