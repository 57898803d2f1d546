"""Helpers for the churn test: deterministic upload bytes that never sit in memory whole,
streaming PATCH and GET over raw sockets, and the servers' JSON access logs summed up."""

from __future__ import annotations

import hashlib
import json
import queue
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tests.support import rawhttp

KiB = 1024
MiB = 1024 * KiB

BLOCK = 64 * KiB
_POOL_SIZE = 4 * MiB
_POOL = random.Random(0x7E7).randbytes(_POOL_SIZE + BLOCK)
_MASK = (1 << 64) - 1


class Source:
    """The bytes of one upload, ``size`` long, a pure function of ``seed``.

    Each 64 KiB block starts with (seed, block index) and goes on with a slice of a random
    pool chosen by a hash of both, so any range can be produced at memcpy speed, and a block
    stored at the wrong place or for the wrong upload changes the digest."""

    def __init__(self, seed: int, size: int) -> None:
        self.seed = seed
        self.size = size

    def _block(self, index: int) -> bytes:
        mixed = (self.seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) & _MASK
        start = (mixed >> 11) % _POOL_SIZE
        return struct.pack(">QQ", self.seed, index) + _POOL[start : start + BLOCK - 16]

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``start:end`` (clamped to the upload)."""
        end = min(end, self.size)
        if start >= end:
            return b""
        first, last = start // BLOCK, (end - 1) // BLOCK
        data = b"".join(self._block(i) for i in range(first, last + 1))
        base = first * BLOCK
        return data[start - base : end - base]

    def pieces(self, start: int, end: int, piece: int = MiB) -> Iterator[bytes]:
        for at in range(start, min(end, self.size), piece):
            yield self.read(at, min(at + piece, end))

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for data in self.pieces(0, self.size, 4 * MiB):
            digest.update(data)
        return digest.hexdigest()


def patch_range(
    url: str,
    source: Source,
    start: int,
    end: int,
    *,
    client: str | None = None,
    timeout: float = 20.0,
) -> rawhttp.RawResponse:
    """One PATCH of ``source[start:end]`` at offset ``start``, streamed 1 MiB at a time."""
    with rawhttp.connect(url, client, timeout) as sock:
        rawhttp.send_head(sock, "PATCH", url, rawhttp.patch_headers(start, end - start))
        for data in source.pieces(start, end):
            sock.sendall(data)
        return rawhttp.read_response(sock)


def simple(
    method: str,
    url: str,
    headers: dict[str, str] | None = None,
    *,
    client: str | None = None,
    timeout: float = 10.0,
) -> rawhttp.RawResponse:
    """A body-less request with a timeout (rawhttp.request has none of its own)."""
    all_headers = {**rawhttp.TUS, **(headers or {})}
    if method == "POST":
        all_headers.setdefault("Content-Length", "0")
    with rawhttp.connect(url, client, timeout) as sock:
        rawhttp.send_head(sock, method, url, all_headers)
        return rawhttp.read_response(sock, head_request=method == "HEAD")


def start_stalled_patch(
    url: str,
    source: Source,
    start: int,
    end: int,
    sent: int,
    *,
    client: str | None = None,
    timeout: float = 10.0,
) -> socket.socket:
    """Open a PATCH for ``source[start:end]``, stream its first ``sent`` bytes and return the
    still-open socket: a request that stalls half-way. A send the server refuses (it
    answered early, or died) ends the streaming early; the socket is returned anyway. A
    failed connect raises ``OSError``."""
    sock = rawhttp.connect(url, client, timeout)
    try:
        rawhttp.send_head(sock, "PATCH", url, rawhttp.patch_headers(start, end - start))
        for data in source.pieces(start, start + sent):
            sock.sendall(data)
    except OSError:
        pass
    return sock


def get_sha256(
    url: str, *, client: str | None = None, timeout: float = 30.0
) -> tuple[int, int, str]:
    """GET ``url``, hashing the body as it arrives: (status, body length, sha256 hex)."""
    with rawhttp.connect(url, client, timeout) as sock:
        rawhttp.send_head(sock, "GET", url, {**rawhttp.TUS, "Connection": "close"})
        status, headers, rest = rawhttp.read_head(sock)
        length = int(headers.get("content-length", "0"))
        digest = hashlib.sha256(rest[:length])
        received = min(len(rest), length)
        while received < length:
            data = sock.recv(min(MiB, length - received))
            if not data:
                raise ConnectionError(f"body ended at {received} of {length} bytes")
            digest.update(data)
            received += len(data)
        return status, received, digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while data := handle.read(4 * MiB):
            digest.update(data)
    return digest.hexdigest()


def log_entries(texts: Iterable[str]) -> Iterator[dict[str, object]]:
    """The JSON log lines of the given logs (a killed server's torn last line is skipped)."""
    for text in texts:
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry


def switch_totals(texts: Iterable[str]) -> dict[str, int]:
    """Per upload, the highest ``node_switches``/``client_switches`` any append logged (they
    are running totals kept in the state store), summed over uploads; and how many append
    lines carried them."""
    nodes: dict[str, int] = {}
    clients: dict[str, int] = {}
    lines = 0
    for entry in log_entries(texts):
        upload = entry.get("upload")
        ns, cs = entry.get("node_switches"), entry.get("client_switches")
        if not isinstance(upload, str) or not isinstance(ns, int) or not isinstance(cs, int):
            continue
        lines += 1
        nodes[upload] = max(nodes.get(upload, 0), ns)
        clients[upload] = max(clients.get(upload, 0), cs)
    return {
        "node_switches": sum(nodes.values()),
        "client_switches": sum(clients.values()),
        "append_lines": lines,
    }


def work_through(work: queue.Queue[Any], stop: threading.Event, run: Callable[[Any], None]) -> None:
    """A client thread: run the queued uploads until none is left or ``stop`` is set,
    recording on each upload (``error``) why it failed instead of ending the thread."""
    while not stop.is_set():
        try:
            upload = work.get_nowait()
        except queue.Empty:
            return
        try:
            run(upload)
        except Exception as exc:
            upload.error = f"{type(exc).__name__}: {exc}"
