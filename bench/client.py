"""Benchmark tus 1.0 client on raw non-blocking sockets driven by asyncio.

Why not httpx: at 256 KiB per request a general-purpose client spends
more CPU per request than a lean server does, so it would measure
itself. Here each request is one small header write plus a zero-copy
``os.sendfile`` (or one ``send`` from a memoryview of a preloaded
buffer), and the response is parsed from a reused receive buffer.

Usage (normally driven by run.py or cluster.py, which pin it with ``taskset -c 1``)::

    python bench/client.py --url http://127.0.0.1:1080/files/ --workload C [--quick]

Several ``--url`` (the nodes of a cluster) send each upload's PATCHes round-robin over
them, one keep-alive connection per node.

Prints one JSON object describing the run (wall time, bytes, requests,
upload URLs and their slice of the data file) to stdout or ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin, urlsplit

from workloads import (
    Workload,
    data_size_needed,
    default_data_path,
    ensure_data_file,
    workload_table,
)

TUS_VERSION = "1.0.0"
RECV_CHUNK = 256 * 1024
SendMode = Literal["sendfile", "buffer"]


class ProtocolError(RuntimeError):
    """The server answered something a tus 1.0 server must not."""


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Payload:
    """Where request bodies come from: one open data file, optionally preloaded."""

    fd: int
    buffer: memoryview | None  # "buffer" mode: the first bytes of the file, all a run sends

    def view(self, offset: int, length: int) -> memoryview:
        assert self.buffer is not None
        return self.buffer[offset : offset + length]


class HttpConnection:
    """One keep-alive HTTP/1.1 connection; requests on it are strictly sequential."""

    def __init__(self, sock: socket.socket, host_header: str) -> None:
        self._sock = sock
        self._fd = sock.fileno()
        self._host = host_header
        self._loop = asyncio.get_running_loop()
        self._rbuf = bytearray()
        self._scratch = bytearray(RECV_CHUNK)
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int, host_header: str) -> HttpConnection:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        # Without NODELAY the sub-MSS tail of each body can wait for the
        # server's delayed ACK (~40 ms), which would dominate workload C.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        return cls(sock, host_header)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._sock.close()

    async def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        payload: Payload | None = None,
        body_offset: int = 0,
        body_length: int = 0,
    ) -> Response:
        head = self._head(method, target, headers, body_length)
        if body_length and payload is not None:
            # MSG_MORE lets the kernel put the header block in the same
            # segment as the first body bytes instead of a tiny packet.
            await self._send_view(memoryview(head), socket.MSG_MORE)
            await self._send_body(payload, body_offset, body_length)
        else:
            await self._send_view(memoryview(head), 0)
        return await self._read_response(method)

    def _head(
        self, method: str, target: str, headers: list[tuple[str, str]], body_length: int
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._host}"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        lines.append(f"Content-Length: {body_length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _wait(self, writable: bool) -> None:
        fut: asyncio.Future[None] = self._loop.create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        if writable:
            self._loop.add_writer(self._fd, wake)
        else:
            self._loop.add_reader(self._fd, wake)
        try:
            await fut
        finally:
            if writable:
                self._loop.remove_writer(self._fd)
            else:
                self._loop.remove_reader(self._fd)

    async def _send_view(self, view: memoryview, flags: int) -> None:
        while view:
            try:
                sent = self._sock.send(view, flags)
            except BlockingIOError:
                await self._wait(writable=True)
                continue
            view = view[sent:]

    async def _send_body(self, payload: Payload, offset: int, length: int) -> None:
        if payload.buffer is not None:
            await self._send_view(payload.view(offset, length), 0)
            return
        while length > 0:
            try:
                sent = os.sendfile(self._fd, payload.fd, offset, length)
            except BlockingIOError:
                await self._wait(writable=True)
                continue
            if sent == 0:
                raise ProtocolError("data file ended early (sendfile sent 0 bytes)")
            offset += sent
            length -= sent

    async def _fill(self) -> None:
        while True:
            try:
                n = self._sock.recv_into(self._scratch)
            except BlockingIOError:
                await self._wait(writable=False)
                continue
            if n == 0:
                raise ConnectionError("server closed the connection mid-response")
            self._rbuf += memoryview(self._scratch)[:n]
            return

    async def _read_until(self, marker: bytes) -> bytes:
        while True:
            idx = self._rbuf.find(marker)
            if idx >= 0:
                out = bytes(self._rbuf[:idx])
                del self._rbuf[: idx + len(marker)]
                return out
            await self._fill()

    async def _read_exact(self, n: int) -> bytes:
        while len(self._rbuf) < n:
            await self._fill()
        out = bytes(self._rbuf[:n])
        del self._rbuf[:n]
        return out

    async def _read_response(self, method: str) -> Response:
        while True:
            status, reason, headers = _parse_head(await self._read_until(b"\r\n\r\n"))
            if not 100 <= status < 200:  # interim responses carry no body; skip them
                break
        keep_alive = headers.get("connection", "").lower() != "close"
        body = await self._read_body(method, status, headers)
        if not keep_alive:
            self.close()
        return Response(status, reason, headers, body, keep_alive)

    async def _read_body(self, method: str, status: int, headers: dict[str, str]) -> bytes:
        if method == "HEAD" or status in (204, 304):
            return b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked()
        length = headers.get("content-length")
        if length is not None:
            return await self._read_exact(int(length))
        # No framing: the body runs to connection close (HTTP/1.1 §6.3).
        headers["connection"] = "close"
        chunks = [bytes(self._rbuf)]
        self._rbuf.clear()
        try:
            while True:
                await self._fill()
                chunks.append(bytes(self._rbuf))
                self._rbuf.clear()
        except ConnectionError:
            return b"".join(chunks)

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = await self._read_until(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # Trailer section: zero or more header lines then an empty line.
                while await self._read_until(b"\r\n"):
                    pass
                return b"".join(parts)
            parts.append(await self._read_exact(size))
            await self._read_exact(2)


def _parse_head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    lines = raw.decode("latin-1").split("\r\n")
    # "HTTP/1.1 201 " (Node omits the reason) and "HTTP/1.1 201" are both valid.
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ProtocolError(f"bad status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line: {line!r}")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return int(parts[1]), parts[2] if len(parts) > 2 else "", headers


@dataclass
class UploadRecord:
    url: str
    data_offset: int
    size: int


@dataclass
class RunResult:
    workload: str
    base_url: str
    wall_s: float
    bytes: int
    requests: int
    reconnects: int
    client_cpu_s: float
    send_mode: str
    nodes: int = 1
    uploads: list[UploadRecord] = field(default_factory=list)


@dataclass
class Target:
    """The server under test, as a host/port to connect to and the creation URL."""

    base_url: str
    host: str
    port: int
    host_header: str

    @classmethod
    def parse(cls, base_url: str) -> Target:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise SystemExit(f"only plain http:// URLs are supported: {base_url}")
        return cls(base_url, parts.hostname, parts.port or 80, parts.netloc)

    def request_target(self, url: str) -> str:
        # Only the path is used: the benchmark always talks to the server it
        # started, whatever host name that server writes into Location.
        parts = urlsplit(urljoin(self.base_url, url))
        return parts.path + (f"?{parts.query}" if parts.query else "")


class Uploader:
    """Runs one tus upload over (re-openable) keep-alive connections, one per target.

    With one target every request goes to it. With several (the nodes of a cluster), the
    POST goes to the first and each PATCH to the next one round-robin, starting with the
    second, so consecutive requests of the upload never meet the same node twice in a row.
    """

    def __init__(self, targets: list[Target], payload: Payload) -> None:
        self.targets = targets
        self.payload = payload
        self.conns: list[HttpConnection | None] = [None] * len(targets)
        self.turn = 0  # index of the target the last request went to
        self.requests = 0
        self.reconnects = 0

    async def _connection(self, index: int) -> HttpConnection:
        conn = self.conns[index]
        if conn is None or conn.closed:
            if conn is not None:
                self.reconnects += 1
            target = self.targets[index]
            conn = self.conns[index] = await HttpConnection.open(
                target.host, target.port, target.host_header
            )
        return conn

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                conn.close()

    async def create(self, size: int) -> str:
        self.turn = 0
        target = self.targets[0]
        conn = await self._connection(0)
        headers = [("Tus-Resumable", TUS_VERSION), ("Upload-Length", str(size))]
        resp = await conn.request("POST", target.request_target(target.base_url), headers)
        self.requests += 1
        location = resp.header("location")
        if resp.status != 201 or not location:
            raise ProtocolError(
                f"POST: expected 201 with Location, got {resp.status} {resp.body[:200]!r}"
            )
        return urljoin(target.base_url, location)

    async def patch(self, url: str, upload_offset: int, data_offset: int, length: int) -> None:
        self.turn = (self.turn + 1) % len(self.targets)
        target = self.targets[self.turn]
        conn = await self._connection(self.turn)
        headers = [
            ("Tus-Resumable", TUS_VERSION),
            ("Upload-Offset", str(upload_offset)),
            ("Content-Type", "application/offset+octet-stream"),
        ]
        resp = await conn.request(
            "PATCH", target.request_target(url), headers, self.payload, data_offset, length
        )
        self.requests += 1
        if resp.status != 204:
            raise ProtocolError(
                f"PATCH @{upload_offset}: expected 204, got {resp.status} {resp.body[:200]!r}"
            )
        got = resp.header("upload-offset")
        if got is None or int(got) != upload_offset + length:
            raise ProtocolError(
                f"PATCH @{upload_offset}: Upload-Offset {got}, expected {upload_offset + length}"
            )

    async def upload(self, data_offset: int, size: int, chunk: int) -> UploadRecord:
        url = await self.create(size)
        done = 0
        while done < size:
            n = min(chunk, size - done)
            await self.patch(url, done, data_offset + done, n)
            done += n
        return UploadRecord(url, data_offset, size)


async def run_workload(
    targets: list[Target], workload: Workload, payload: Payload
) -> tuple[list[UploadRecord], int, int]:
    """Run all uploads of ``workload`` concurrently, one connection (per target) each."""
    uploaders = [Uploader(targets, payload) for _ in range(workload.uploads)]
    try:
        records = await asyncio.gather(
            *(u.upload(*workload.slice_of(i), workload.chunk) for i, u in enumerate(uploaders))
        )
    finally:
        for u in uploaders:
            u.close()
    return list(records), sum(u.requests for u in uploaders), sum(u.reconnects for u in uploaders)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_payload(path: Path, mode: SendMode, size: int) -> Payload:
    fd = os.open(path, os.O_RDONLY)
    if mode == "sendfile":
        return Payload(fd, None)
    # Preload before the clock starts so the timed part only sends.
    with open(path, "rb") as f:
        data = f.read(size)
    return Payload(fd, memoryview(data))


async def benchmark(
    base_urls: list[str], workload: Workload, payload: Payload, limit_s: float, mode: str
) -> RunResult:
    targets = [Target.parse(url) for url in base_urls]
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    records, requests, reconnects = await asyncio.wait_for(
        run_workload(targets, workload, payload), limit_s
    )
    wall = time.perf_counter() - t0
    return RunResult(
        workload=workload.name,
        base_url=base_urls[0],
        nodes=len(base_urls),
        wall_s=wall,
        bytes=workload.total_bytes,
        requests=requests,
        reconnects=reconnects,
        client_cpu_s=_cpu_seconds() - cpu0,
        send_mode=mode,
        uploads=records,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--url",
        required=True,
        action="append",
        help="tus creation URL, e.g. http://127.0.0.1:1080/files/; repeat it (one per node of"
        " a cluster) to send each upload's PATCHes round-robin over the nodes",
    )
    p.add_argument("--workload", required=True, choices=sorted(workload_table(False)))
    p.add_argument("--quick", action="store_true", help="use the small smoke-test sizes")
    p.add_argument(
        "--data", type=Path, help="payload file (created if missing; default: in $TMPDIR)"
    )
    p.add_argument("--send", choices=["sendfile", "buffer"], default="sendfile")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds")
    p.add_argument("--json", type=Path, help="write the result here instead of stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    table = workload_table(args.quick)
    workload = table[args.workload]
    if args.data is not None and args.data.exists():
        data: Path = args.data  # run.py made it; only check it covers this workload
        size = data.stat().st_size
        if size < workload.total_bytes:
            raise SystemExit(
                f"{data} holds {size} bytes, workload {workload.name} needs {workload.total_bytes}"
            )
    else:
        size = data_size_needed(list(table.values()))
        data = args.data or default_data_path(Path(tempfile.gettempdir()) / "tether-bench", size)
        ensure_data_file(data, size)
    mode: SendMode = args.send
    payload = open_payload(data, mode, workload.total_bytes)
    try:
        result = asyncio.run(benchmark(args.url, workload, payload, args.timeout, mode))
    except (ProtocolError, OSError) as exc:  # OSError covers ConnectionError and TimeoutError
        print(
            f"client: workload {workload.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr
        )
        return 1
    finally:
        os.close(payload.fd)
    text = json.dumps(asdict(result), indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
