"""Shared pieces of the ``tether dns`` tests: configurations, queries, health endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from typing import Any

import dns.edns
import dns.message
import dns.rrset

from tether.dns.config import DnsConfig, parse_config

BASE: dict[str, Any] = {
    "zone": "example.net",
    "ttl": 30,
    "answers": 1,
    "nameserver": [{"name": "ns1", "ipv4": ["192.0.2.53"], "ipv6": ["2001:db8::53"]}],
    "health": {"interval": 0.1, "timeout": 0.3, "rise": 2, "fall": 2},
    "pop": [
        {"id": "fra", "ipv4": ["192.0.2.10"], "ipv6": ["2001:db8:10::1"], "weight": 2},
        {"id": "ams", "ipv4": ["192.0.2.20"], "ipv6": ["2001:db8:20::1"], "weight": 1},
        {"id": "nyc", "ipv4": ["192.0.2.30"], "weight": 1},
    ],
    "service": [{"name": "upload"}, {"name": "files.cdn", "answers": 2}],
}


def config_data(**changes: Any) -> dict[str, Any]:
    """A copy of :data:`BASE` with top-level keys replaced."""
    data = copy.deepcopy(BASE)
    data.update(changes)
    return data


def make_config(**changes: Any) -> DnsConfig:
    return parse_config(config_data(**changes), "test")


def query(
    name: str,
    rdtype: str = "A",
    *,
    ecs: str | None = None,
    edns: bool | None = None,
    payload: int = 1232,
) -> dns.message.Message:
    """A query; ``ecs`` is ``address/length``; EDNS is on when ECS is given."""
    options: list[dns.edns.Option] = []
    if ecs is not None:
        address, length = ecs.split("/")
        options.append(dns.edns.ECSOption(address, int(length)))
    if not (edns or ecs is not None):
        return dns.message.make_query(name, rdtype, use_edns=False)
    return dns.message.make_query(name, rdtype, use_edns=0, payload=payload, options=options)


def addresses(message: dns.message.Message) -> list[str]:
    """The A/AAAA addresses of an answer, in order."""
    return [rdata.to_text() for rrset in message.answer for rdata in rrset]


def ecs_of(message: dns.message.Message) -> dns.edns.ECSOption | None:
    for option in message.options:
        if isinstance(option, dns.edns.ECSOption):
            return option
    return None


class HealthEndpoint:
    """A tiny HTTP server on a free loopback port answering ``GET /ready``.

    ``mode`` is ``"ok"`` (200), ``"error"`` (503) or ``"hang"`` (reads the request and
    never answers); :meth:`stop` closes the listening socket so connections are refused.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.server: asyncio.Server | None = None
        self.port = 0
        self.hits = 0
        self._hung: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ready"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in self._hung:
                writer.close()
            self._hung.clear()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.hits += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            if self.mode == "hang":
                self._hung.add(writer)
                return
            status = "200 OK" if self.mode == "ok" else "503 Service Unavailable"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        if writer not in self._hung:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def health_endpoints(count: int) -> AsyncIterator[list[HealthEndpoint]]:
    endpoints = [HealthEndpoint() for _ in range(count)]
    try:
        for endpoint in endpoints:
            await endpoint.start()
        yield endpoints
    finally:
        for endpoint in endpoints:
            await endpoint.stop()


def rrset_texts(rrsets: list[dns.rrset.RRset]) -> list[str]:
    return [rrset.to_text() for rrset in rrsets]
