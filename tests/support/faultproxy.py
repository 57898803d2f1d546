"""A TCP proxy on loopback that breaks connections on purpose, for client tests.

Every connection draws, after each random stretch of client-to-server bytes, what happens
next: nothing (another stretch), a **cut** (both ends closed cleanly), a **reset** (RST, via
``SO_LINGER`` 0), or a **stall** (nothing forwarded, both sockets open, for a while; then
cut). Keep-alive connections that carry many requests meet faults too. Counters say how
often each happened, so tests can bound what the client re-sent.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass
class Faults:
    cut: float = 0.0  # share of connections cut
    reset: float = 0.0  # share reset
    stall: float = 0.0  # share stalled
    after_min: int = 0  # client bytes between draws
    after_max: int = 8 * 1024 * 1024
    stall_seconds: float = 3.0
    only_connection: int | None = None  # fault only the n-th connection (1-based), if set
    rate: float | None = None  # client-to-server bytes per second, per connection


@dataclass
class Counters:
    connections: int = 0
    cuts: int = 0
    resets: int = 0
    stalls: int = 0
    upstream_bytes: int = 0

    @property
    def faults(self) -> int:
        return self.cuts + self.resets + self.stalls


@dataclass
class FaultProxy:
    target_port: int
    faults: Faults = field(default_factory=Faults)
    seed: int = 0
    host: str = "127.0.0.1"
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(128)
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/files/"

    def __enter__(self) -> FaultProxy:
        thread = threading.Thread(target=self._accept, name="faultproxy", daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(5)

    def _fate(self, number: int) -> tuple[str, int]:
        """What happens after how many more client bytes on connection ``number``."""
        f = self.faults
        with self._lock:
            draw = self._rng.random()
            after = self._rng.randint(f.after_min, max(f.after_min, f.after_max))
        if f.only_connection is not None and number != f.only_connection:
            return "pass", 1 << 62
        if draw < f.cut:
            return "cut", after
        if draw < f.cut + f.reset:
            return "reset", after
        if draw < f.cut + f.reset + f.stall:
            return "stall", after
        return "pass", after

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            thread.start()
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self.counters.connections += 1
            number = self.counters.connections
        fate, after = self._fate(number)
        try:
            upstream = socket.create_connection((self.host, self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets.update((client, upstream))
        passed = 0
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.5)
                for sock in readable:
                    data = sock.recv(256 * 1024)
                    if not data:
                        return
                    if sock is upstream:
                        client.sendall(data)
                        continue
                    while fate == "pass" and passed + len(data) >= after:
                        fate, more = self._fate(number)
                        after += more
                    if fate != "pass" and passed + len(data) >= after:
                        keep = max(0, after - passed)
                        if keep:
                            upstream.sendall(data[:keep])
                        self._fault(fate, client, upstream)
                        return
                    passed += len(data)
                    with self._lock:
                        self.counters.upstream_bytes += len(data)
                    upstream.sendall(data)
                    if self.faults.rate:
                        self._stop.wait(len(data) / self.faults.rate)
        except OSError:
            return
        finally:
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.close()
                with self._lock:
                    self._sockets.discard(sock)

    def _fault(self, fate: str, client: socket.socket, upstream: socket.socket) -> None:
        with self._lock:
            if fate == "cut":
                self.counters.cuts += 1
            elif fate == "reset":
                self.counters.resets += 1
            else:
                self.counters.stalls += 1
        if fate == "stall":
            # Both sockets stay open and silent, like a connection that died on the way.
            self._stop.wait(self.faults.stall_seconds)
        if fate == "reset":
            linger = struct.pack("ii", 1, 0)
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
