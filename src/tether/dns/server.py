"""The sockets around :class:`~tether.dns.wire.Responder`: UDP, TCP, health checks, metrics.

One asyncio event loop (uvloop when installed) serves UDP and TCP on the same port. UDP
queries are answered synchronously in ``datagram_received``: the whole answer path is
CPU work, so there is nothing to await. TCP follows RFC 7766: 2-byte length framing,
several queries per connection, an idle timeout, and a cap on open connections.

Limits: a TCP connection idle for ``tcp_idle_timeout`` seconds (or stalled mid-message)
is closed; at most ``max_tcp_connections`` are open at once, later ones are closed at
once. The metrics listener reads at most 8 KiB of request head within 5 seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
from dataclasses import dataclass
from typing import cast

from tether.dns.config import DnsConfig, Pop
from tether.dns.health import HealthChecker
from tether.dns.wire import Counters, Responder

logger = logging.getLogger("tether.dns")

UDP_RECEIVE_BUFFER = 4 << 20  # absorbs bursts while the loop is busy; capped by rmem_max
_BIND_ATTEMPTS = 20
_METRICS_HEAD_LIMIT = 8192
_METRICS_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 5353  # 0 picks a free port (the same for UDP and TCP)
    metrics_port: int | None = None  # HTTP GET /metrics on host:metrics_port; None = off
    tcp_idle_timeout: float = 10.0
    max_tcp_connections: int = 256
    cache_entries: int | None = None  # packet cache size; None = the default, 0 = off


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, responder: Responder) -> None:
        self.respond = responder.respond
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's: a cast, not an isinstance check.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        out = self.respond(data, str(addr[0]))
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error for an earlier answer (the client went away): nothing to do.
        logger.debug("UDP error", extra={"error": repr(exc)})


class DnsServer:
    """``tether dns``: start with :meth:`start`, stop with :meth:`close`."""

    def __init__(self, config: DnsConfig, settings: ServerSettings = ServerSettings()) -> None:
        self.config = config
        self.settings = settings
        self.counters = Counters()
        extra = {} if settings.cache_entries is None else {"cache_entries": settings.cache_entries}
        self.responder = Responder(config, counters=self.counters, **extra)
        self.health = HealthChecker(config.pops, config.health, self._health_changed)
        self.port = 0
        self.metrics_port: int | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._metrics: asyncio.Server | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Bind UDP and TCP (and metrics) and start the health checks.

        Raises ``OSError`` if the port cannot be bound.
        """
        await self._bind(self.settings.host, self.settings.port)
        if self.settings.metrics_port is not None:
            self._metrics = await asyncio.start_server(
                self._serve_metrics, self.settings.host, self.settings.metrics_port
            )
            self.metrics_port = self._metrics.sockets[0].getsockname()[1]
        self._health_task = asyncio.create_task(self._run_health())

    async def close(self) -> None:
        """Stop listening, end open TCP connections and health checks."""
        if self._udp is not None:
            self._udp.close()
        for server in (self._tcp, self._metrics):
            if server is not None:
                server.close()
        tasks = [t for t in (self._health_task, *self._connections) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in (self._tcp, self._metrics):
            if server is not None:
                await server.wait_closed()

    async def _bind(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        for attempt in range(_BIND_ATTEMPTS):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self.responder), local_addr=(host, port)
            )
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            bound = sock.getsockname()[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, bound)
            except OSError as exc:
                transport.close()
                # With port 0, the UDP port the kernel chose may be taken for TCP: try another.
                if port != 0 or exc.errno != errno.EADDRINUSE or attempt == _BIND_ATTEMPTS - 1:
                    raise
                continue
            self._udp = transport
            self.port = bound
            return

    async def _run_health(self) -> None:
        try:
            await self.health.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # the checker must never take the server down with it
            logger.exception("health checks stopped")

    def _health_changed(self, pop: Pop, up: bool, healthy: frozenset[str]) -> None:
        self.counters.health_changes[(pop.id, "up" if up else "down")] += 1
        self.responder.set_healthy(healthy)

    def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.settings.max_tcp_connections:
            writer.close()
            return
        task = asyncio.create_task(self._tcp_connection(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _tcp_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else "0.0.0.0"
        idle = self.settings.tcp_idle_timeout
        try:
            while True:
                async with asyncio.timeout(idle):
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    wire = await reader.readexactly(size)
                out = self.responder.respond(wire, source, tcp=True)
                if out is None:
                    continue
                writer.write(len(out).to_bytes(2, "big") + out)
                async with asyncio.timeout(idle):
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass  # the client finished, went quiet, or went away
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_metrics(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            async with asyncio.timeout(_METRICS_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > _METRICS_HEAD_LIMIT:
                raise ValueError("request head too large")
            target = head.split(b"\r\n", 1)[0].split(b" ")
            if len(target) >= 2 and target[0] == b"GET" and target[1] == b"/metrics":
                status, body = "200 OK", self.counters.render().encode()
            else:
                status, body = "404 Not Found", b"not found: try GET /metrics\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            async with asyncio.timeout(_METRICS_TIMEOUT):
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def serve_until_signalled(config: DnsConfig, settings: ServerSettings) -> None:
    """Run a server until SIGINT or SIGTERM; logs where it listens and its final counts."""
    server = DnsServer(config, settings)
    await server.start()
    # Everything built so far (modules, the zone, dnspython's tables) lives as long as the
    # process: keep it out of the collector's full passes, which otherwise walk all of it
    # while queries wait (measured: a few ms per pass).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    logger.info(
        "tether dns listening",
        extra={
            "host": settings.host,
            "port": server.port,
            "metrics_port": server.metrics_port,
            "zone": str(config.zone),
            "services": ",".join(str(s.name) for s in config.services),
            "pops": ",".join(p.id for p in config.pops),
        },
    )
    try:
        await stop.wait()
    finally:
        await server.close()
        counters = server.counters
        logger.info(
            "tether dns stopped",
            extra={
                "queries": sum(counters.queries.values()),
                "cache_hits": counters.cache_hits,
                "answers": dict(counters.answers),
            },
        )


def run(config: DnsConfig, settings: ServerSettings) -> None:
    """Serve in a fresh event loop (uvloop when installed) until signalled."""
    loop_factory = None
    with contextlib.suppress(ImportError):
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve_until_signalled(config, settings))
