"""A real server on loopback sockets: dnspython over UDP and TCP, health, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import httpx
import pytest

from tether.dns.config import DnsConfig
from tether.dns.policy import client_subnet, rank
from tether.dns.server import DnsServer, ServerSettings

from .helpers import addresses, config_data, ecs_of, health_endpoints, make_config, query

HOST = "127.0.0.1"


@contextlib.asynccontextmanager
async def running(config: DnsConfig, **settings: Any) -> AsyncIterator[DnsServer]:
    server = DnsServer(config, ServerSettings(host=HOST, port=0, **settings))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def udp(server: DnsServer, message: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.udp(message, HOST, port=server.port, timeout=2)


async def tcp(server: DnsServer, message: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.tcp(message, HOST, port=server.port, timeout=2)


async def test_udp_and_tcp_with_and_without_ecs() -> None:
    config = make_config()
    async with running(config) as server:
        for send in (udp, tcp):
            plain = await send(server, query("upload.example.net."))
            assert plain.rcode() == dns.rcode.NOERROR and plain.flags & dns.flags.AA
            subnet = client_subnet(HOST)  # no ECS: the resolver's (our) address decides
            best = rank(subnet, config.services[0].pops, config.key)[0]
            assert addresses(plain) == [str(best.ipv4[0])]
            with_ecs = await send(server, query("upload.example.net.", ecs="203.0.113.0/24"))
            best = rank(client_subnet("203.0.113.0", 24), config.services[0].pops, config.key)[0]
            assert addresses(with_ecs) == [str(best.ipv4[0])]
            option = ecs_of(with_ecs)
            assert option is not None and (option.srclen, option.scopelen) == (24, 24)
            v6 = await send(server, query("upload.example.net.", "AAAA", ecs="2001:db8:9::/56"))
            assert ecs_of(v6).scopelen == 56  # type: ignore[union-attr]
            assert len(addresses(v6)) == 1


async def test_nxdomain_and_refused() -> None:
    async with running(make_config()) as server:
        for send in (udp, tcp):
            missing = await send(server, query("missing.example.net."))
            assert missing.rcode() == dns.rcode.NXDOMAIN
            assert missing.authority[0].rdtype == dns.rdatatype.SOA
            outside = await send(server, query("www.example.org."))
            assert outside.rcode() == dns.rcode.REFUSED


async def test_truncated_over_udp_complete_over_tcp() -> None:
    many = [f"192.0.2.{i}" for i in range(1, 61)]
    config = make_config(pop=[{"id": "big", "ipv4": many}], service=[{"name": "upload"}])
    async with running(config) as server:
        truncated = await udp(server, query("upload.example.net."))
        assert truncated.flags & dns.flags.TC and truncated.answer == []
        full = await tcp(server, query("upload.example.net."))
        assert not full.flags & dns.flags.TC
        assert addresses(full) == many
        fits = await udp(server, query("upload.example.net.", edns=True, payload=1232))
        assert not fits.flags & dns.flags.TC and addresses(fits) == many


async def test_tcp_pipelining_idle_timeout_and_connection_cap() -> None:
    async with running(make_config(), tcp_idle_timeout=0.3, max_tcp_connections=2) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        try:
            queries = [query("upload.example.net."), query("missing.example.net.")]
            writer.write(b"".join(q.to_wire(prepend_length=True) for q in queries))
            await writer.drain()
            async with asyncio.timeout(2):
                for sent in queries:
                    size = int.from_bytes(await reader.readexactly(2), "big")
                    response = dns.message.from_wire(await reader.readexactly(size))
                    assert response.id == sent.id
                second = await asyncio.open_connection(HOST, server.port)
                third = await asyncio.open_connection(HOST, server.port)
                # The third connection is over the cap and closed at once.
                assert await third[0].read() == b""
                # An idle connection is closed after the idle timeout.
                assert await reader.read() == b""
                for _, w in (second, third):
                    w.close()
        finally:
            writer.close()


async def test_metrics_endpoint() -> None:
    async with running(make_config(), metrics_port=0) as server:
        await udp(server, query("upload.example.net."))
        await udp(server, query("missing.example.net."))
        async with httpx.AsyncClient(trust_env=False) as client:
            metrics = await client.get(f"http://{HOST}:{server.metrics_port}/metrics")
            other = await client.get(f"http://{HOST}:{server.metrics_port}/")
        assert metrics.status_code == 200 and other.status_code == 404
        assert 'tether_dns_queries_total{transport="udp"} 2' in metrics.text
        assert 'tether_dns_responses_total{rcode="NXDOMAIN"} 1' in metrics.text


async def _first_choices(server: DnsServer, subnets: list[str]) -> list[list[str]]:
    return [
        addresses(await udp(server, query("upload.example.net.", ecs=subnet))) for subnet in subnets
    ]


async def _wait_until(predicate: Any, limit: float) -> float:
    """Seconds until ``await predicate()`` is true; fails after ``limit`` seconds."""
    started = time.monotonic()
    async with asyncio.timeout(limit):
        while not await predicate():  # noqa: ASYNC110 - polls what another task owns
            await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("failure", ["stopped", "hanging"])
async def test_a_failing_pop_is_dropped_within_fall_and_restored_after_rise(failure: str) -> None:
    """Only the failed POP's clients move, within ``fall`` checks; they come back after
    ``rise`` passing checks."""
    interval, timeout, rise, fall = 0.2, 0.25, 2, 3
    async with health_endpoints(3) as endpoints:
        data = config_data(
            health={"interval": interval, "timeout": timeout, "rise": rise, "fall": fall}
        )
        for pop, endpoint in zip(data["pop"], endpoints, strict=True):
            pop["health"] = endpoint.url
        config = make_config(**data)
        pops = config.services[0].pops
        fra = endpoints[0]
        rng = random.Random(15)
        subnets = [
            f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
            for _ in range(60)
        ]
        tops = [rank(client_subnet(s.split("/")[0], 24), pops, config.key)[0].id for s in subnets]
        assert "fra" in tops and len(set(tops)) == 3
        async with running(config) as server:
            before = await _first_choices(server, subnets)
            await asyncio.sleep(interval * 2)  # a few passing checks first
            if failure == "stopped":
                await fra.stop()  # connections refused from now on
            else:
                fra.mode = "hang"  # accepted, never answered: each check times out

            async def fra_gone() -> bool:
                return "fra" not in server.health.healthy

            elapsed = await _wait_until(fra_gone, 10)
            per_check = interval if failure == "stopped" else max(interval, timeout)
            assert elapsed >= (fall - 1) * per_check * 0.9
            assert elapsed <= fall * per_check + timeout + 1.0
            during = await _first_choices(server, subnets)
            for top, old, new in zip(tops, before, during, strict=True):
                if top == "fra":
                    assert new != old and new != ["192.0.2.10"]
                else:
                    assert new == old  # nobody else moves

            if failure == "stopped":
                await fra.start()  # the same port again
            else:
                fra.mode = "ok"

            async def fra_back() -> bool:
                return "fra" in server.health.healthy

            elapsed = await _wait_until(fra_back, 10)
            assert (rise - 1) * interval * 0.9 <= elapsed <= rise * per_check + timeout + 1.0
            assert await _first_choices(server, subnets) == before
            assert server.counters.health_changes == {("fra", "down"): 1, ("fra", "up"): 1}


async def test_every_pop_down_answers_with_all() -> None:
    async with health_endpoints(3) as endpoints:
        data = config_data(
            answers=3, health={"interval": 0.05, "timeout": 0.2, "rise": 1, "fall": 1}
        )
        for pop, endpoint in zip(data["pop"], endpoints, strict=True):
            pop["health"] = endpoint.url
            endpoint.mode = "error"
        async with running(make_config(**data)) as server:

            async def all_down() -> bool:
                return not server.health.healthy

            await _wait_until(all_down, 5)
            response = await udp(server, query("upload.example.net."))
            assert sorted(addresses(response)) == ["192.0.2.10", "192.0.2.20", "192.0.2.30"]
