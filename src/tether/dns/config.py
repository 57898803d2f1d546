"""The ``tether dns`` configuration file (TOML).

::

    zone = "example.net"          # the zone this server is authoritative for
    ttl = 30                      # TTL of A/AAAA answers (seconds)
    answers = 1                   # how many POPs an answer names, best first
    ipv4_prefix = 24              # client subnets are hashed at this length ...
    ipv6_prefix = 56              # ... and reported as the ECS scope
    hash_key = "tether-dns"       # instances that must agree share it
    payload = 1232                # the EDNS UDP payload size we advertise and fill

    [soa]                         # optional, every field has a default
    primary = "ns1"               # default: the first name server
    contact = "hostmaster"        # the mailbox, as a name
    serial = 1
    refresh = 3600
    retry = 600
    expire = 604800
    minimum = 60                  # also the TTL of negative answers
    ttl = 3600                    # of SOA, NS and glue records

    [[nameserver]]
    name = "ns1"                  # relative to the zone, or absolute with a final dot
    ipv4 = ["192.0.2.53"]         # glue, needed for names inside the zone

    [health]
    interval = 2.0                # seconds between checks of one POP
    timeout = 1.0                 # seconds one check may take
    rise = 2                      # passes in a row that bring a POP back
    fall = 3                      # failures in a row that take it out

    [[pop]]
    id = "fra"
    ipv4 = ["192.0.2.10"]
    ipv6 = ["2001:db8:10::1"]
    weight = 2
    health = "http://192.0.2.10/ready"   # optional: without it, always up

    [[service]]
    name = "upload"               # "@" for the zone apex
    pops = ["fra", "ams"]         # optional: default every POP
    # ttl and answers may be set per service too

Every mistake raises :class:`ConfigError`, whose message names the file and the key.
Unknown keys are mistakes too: a misspelt ``wieght`` must not silently become 1.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dns.exception
import dns.name

from tether.dns.policy import (
    DEFAULT_IPV4_PREFIX,
    DEFAULT_IPV6_PREFIX,
    DEFAULT_KEY,
    MAX_KEY_BYTES,
    Masks,
)

DEFAULT_TTL = 30
DEFAULT_PAYLOAD = 1232  # the EDNS buffer size of DNS Flag Day 2020: no IP fragmentation
MAX_TTL = 2**31 - 1  # RFC 2181 section 8
_POP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Pop:
    """A point of presence: where a client may be sent."""

    id: str
    weight: float
    ipv4: tuple[IPv4Address, ...]
    ipv6: tuple[IPv6Address, ...]
    health: str | None  # URL checked over HTTP; None = always up


@dataclass(frozen=True, slots=True)
class Service:
    """A name answered with POP addresses."""

    name: dns.name.Name
    pops: tuple[Pop, ...]
    ttl: int
    answers: int


@dataclass(frozen=True, slots=True)
class NameServer:
    name: dns.name.Name
    ipv4: tuple[IPv4Address, ...]
    ipv6: tuple[IPv6Address, ...]


@dataclass(frozen=True, slots=True)
class Soa:
    primary: dns.name.Name
    contact: dns.name.Name
    serial: int
    refresh: int
    retry: int
    expire: int
    minimum: int  # also the TTL of negative answers (RFC 2308)
    ttl: int


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3


@dataclass(frozen=True, slots=True)
class DnsConfig:
    zone: dns.name.Name
    soa: Soa
    nameservers: tuple[NameServer, ...]
    pops: tuple[Pop, ...]
    services: tuple[Service, ...]
    health: HealthSettings
    masks: Masks
    key: bytes
    payload: int  # our EDNS UDP payload size


def load_config(path: str | Path) -> DnsConfig:
    """Read and check a configuration file; raises :class:`ConfigError`."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_config(data, source)


def parse_config(data: Mapping[str, Any], source: str = "config") -> DnsConfig:
    """Check an already parsed TOML document; raises :class:`ConfigError`."""
    return _Parser(source).config(data)


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"{self.source}: {where}: {message}")

    # ----------------------------------------------------------------- primitives

    def table(self, value: Any, where: str, allowed: set[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            known = ", ".join(sorted(allowed))
            raise self.fail(where, f"unknown key {unknown[0]!r} (known: {known})")
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(where, f"must be a whole number in {low}..{high}, got {value!r}")
        return value

    def seconds(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(where, f"must be a number of seconds, got {value!r}")
        if not (math.isfinite(value) and 0 < value <= 86400):
            raise self.fail(where, f"must be more than 0 and at most 86400, got {value!r}")
        return float(value)

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, f"must be a non-empty string, got {value!r}")
        return value

    def name(self, value: Any, where: str, origin: dns.name.Name) -> dns.name.Name:
        text = self.text(value, where)
        try:
            if text == "@":
                return origin
            return dns.name.from_text(text, origin=origin)
        except dns.exception.DNSException as exc:
            raise self.fail(where, f"not a DNS name: {text!r} ({exc})") from None

    def addresses(self, value: Any, where: str, version: int) -> list[IPv4Address | IPv6Address]:
        if not isinstance(value, list):
            raise self.fail(where, "must be a list of addresses")
        found: list[IPv4Address | IPv6Address] = []
        for i, item in enumerate(value):
            try:
                address = ip_address(self.text(item, f"{where}[{i}]"))
            except ValueError:
                raise self.fail(f"{where}[{i}]", f"not an IP address: {item!r}") from None
            if address.version != version:
                raise self.fail(f"{where}[{i}]", f"{item!r} is not an IPv{version} address")
            if address in found:
                raise self.fail(f"{where}[{i}]", f"{item!r} is listed twice")
            found.append(address)
        return found

    def ipv4(self, entry: Mapping[str, Any], where: str) -> tuple[IPv4Address, ...]:
        found = self.addresses(entry.get("ipv4", []), f"{where}.ipv4", 4)
        return tuple(a for a in found if isinstance(a, IPv4Address))

    def ipv6(self, entry: Mapping[str, Any], where: str) -> tuple[IPv6Address, ...]:
        found = self.addresses(entry.get("ipv6", []), f"{where}.ipv6", 6)
        return tuple(a for a in found if isinstance(a, IPv6Address))

    # ----------------------------------------------------------------- sections

    def config(self, data: Mapping[str, Any]) -> DnsConfig:
        top = self.table(
            data,
            "top level",
            {
                "zone",
                "ttl",
                "answers",
                "ipv4_prefix",
                "ipv6_prefix",
                "hash_key",
                "payload",
                "soa",
                "nameserver",
                "health",
                "pop",
                "service",
            },
        )
        if "zone" not in top:
            raise self.fail("zone", 'missing (the zone to serve, e.g. zone = "example.net")')
        zone = self.name(top["zone"], "zone", dns.name.root)
        ttl = self.integer(top.get("ttl", DEFAULT_TTL), "ttl", 0, MAX_TTL)
        answers = self.integer(top.get("answers", 1), "answers", 1, 64)
        masks = Masks(
            self.integer(top.get("ipv4_prefix", DEFAULT_IPV4_PREFIX), "ipv4_prefix", 0, 32),
            self.integer(top.get("ipv6_prefix", DEFAULT_IPV6_PREFIX), "ipv6_prefix", 0, 128),
        )
        key = self.text(top.get("hash_key", DEFAULT_KEY.decode()), "hash_key").encode()
        if len(key) > MAX_KEY_BYTES:
            raise self.fail("hash_key", f"at most {MAX_KEY_BYTES} bytes")
        payload = self.integer(top.get("payload", DEFAULT_PAYLOAD), "payload", 512, 65535)

        nameservers = self.nameservers(top.get("nameserver"), zone)
        soa = self.soa(top.get("soa", {}), zone, nameservers)
        health = self.health(top.get("health", {}))
        pops = self.pops(top.get("pop"))
        services = self.services(top.get("service"), zone, pops, ttl, answers)
        taken = {ns.name: f"nameserver {ns.name}" for ns in nameservers}
        for service in services:
            if service.name in taken:
                raise self.fail(
                    f"service {service.name}", f"name already used by {taken[service.name]}"
                )
        return DnsConfig(zone, soa, nameservers, pops, services, health, masks, key, payload)

    def nameservers(self, value: Any, zone: dns.name.Name) -> tuple[NameServer, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(
                "nameserver",
                'at least one [[nameserver]] table is needed (name = "ns1", ipv4 = [...])',
            )
        found: dict[dns.name.Name, NameServer] = {}
        for i, item in enumerate(value):
            where = f"nameserver[{i}]"
            entry = self.table(item, where, {"name", "ipv4", "ipv6"})
            if "name" not in entry:
                raise self.fail(where, "missing key 'name'")
            name = self.name(entry["name"], f"{where}.name", zone)
            ipv4 = self.ipv4(entry, where)
            ipv6 = self.ipv6(entry, where)
            if name in found:
                raise self.fail(where, f"{name} is listed twice")
            if name.is_subdomain(zone) and not (ipv4 or ipv6):
                raise self.fail(
                    where, f"{name} lies inside the zone, so it needs ipv4 or ipv6 glue"
                )
            found[name] = NameServer(name, ipv4, ipv6)
        return tuple(found.values())

    def soa(self, value: Any, zone: dns.name.Name, nameservers: tuple[NameServer, ...]) -> Soa:
        entry = self.table(
            value,
            "soa",
            {"primary", "contact", "serial", "refresh", "retry", "expire", "minimum", "ttl"},
        )
        week = 7 * 86400
        return Soa(
            primary=self.name(entry["primary"], "soa.primary", zone)
            if "primary" in entry
            else nameservers[0].name,
            contact=self.name(entry.get("contact", "hostmaster"), "soa.contact", zone),
            serial=self.integer(entry.get("serial", 1), "soa.serial", 0, 2**32 - 1),
            refresh=self.integer(entry.get("refresh", 3600), "soa.refresh", 0, MAX_TTL),
            retry=self.integer(entry.get("retry", 600), "soa.retry", 0, MAX_TTL),
            expire=self.integer(entry.get("expire", week), "soa.expire", 0, MAX_TTL),
            minimum=self.integer(entry.get("minimum", 60), "soa.minimum", 0, MAX_TTL),
            ttl=self.integer(entry.get("ttl", 3600), "soa.ttl", 0, MAX_TTL),
        )

    def health(self, value: Any) -> HealthSettings:
        entry = self.table(value, "health", {"interval", "timeout", "rise", "fall"})
        defaults = HealthSettings()
        return HealthSettings(
            interval=self.seconds(entry.get("interval", defaults.interval), "health.interval"),
            timeout=self.seconds(entry.get("timeout", defaults.timeout), "health.timeout"),
            rise=self.integer(entry.get("rise", defaults.rise), "health.rise", 1, 100),
            fall=self.integer(entry.get("fall", defaults.fall), "health.fall", 1, 100),
        )

    def pops(self, value: Any) -> tuple[Pop, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail(
                "pop", 'at least one [[pop]] table is needed (id = "fra", ipv4 = [...])'
            )
        found: dict[str, Pop] = {}
        for i, item in enumerate(value):
            where = f"pop[{i}]"
            entry = self.table(item, where, {"id", "ipv4", "ipv6", "weight", "health"})
            if "id" not in entry:
                raise self.fail(where, "missing key 'id'")
            pop_id = self.text(entry["id"], f"{where}.id")
            if not _POP_ID.match(pop_id):
                raise self.fail(
                    f"{where}.id",
                    f"{pop_id!r}: use letters, digits, '-', '_' and '.' (at most 63 characters)",
                )
            where = f"pop {pop_id!r}"
            if pop_id in found:
                raise self.fail(where, "id is used twice")
            weight = entry.get("weight", 1)
            if (
                isinstance(weight, bool)
                or not isinstance(weight, int | float)
                or not (math.isfinite(weight) and 0 < weight <= 1e6)
            ):
                raise self.fail(
                    f"{where}.weight", f"must be a number above 0 (at most 1e6), got {weight!r}"
                )
            ipv4 = self.ipv4(entry, where)
            ipv6 = self.ipv6(entry, where)
            if not ipv4 and not ipv6:
                raise self.fail(where, "needs at least one address in ipv4 or ipv6")
            health = None
            if "health" in entry:
                health = self.text(entry["health"], f"{where}.health")
                parts = urlsplit(health)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise self.fail(
                        f"{where}.health", f"must be an http:// or https:// URL, got {health!r}"
                    )
            found[pop_id] = Pop(pop_id, float(weight), ipv4, ipv6, health)
        return tuple(found.values())

    def services(
        self, value: Any, zone: dns.name.Name, pops: tuple[Pop, ...], ttl: int, answers: int
    ) -> tuple[Service, ...]:
        if not isinstance(value, list) or not value:
            raise self.fail("service", 'at least one [[service]] table is needed (name = "upload")')
        by_id = {pop.id: pop for pop in pops}
        found: dict[dns.name.Name, Service] = {}
        for i, item in enumerate(value):
            where = f"service[{i}]"
            entry = self.table(item, where, {"name", "pops", "ttl", "answers"})
            if "name" not in entry:
                raise self.fail(where, "missing key 'name'")
            name = self.name(entry["name"], f"{where}.name", zone)
            where = f"service {name}"
            if not name.is_subdomain(zone):
                raise self.fail(where, f"lies outside the zone {zone}")
            if name in found:
                raise self.fail(where, "is listed twice")
            pool = pops
            if "pops" in entry:
                ids = entry["pops"]
                if not isinstance(ids, list) or not ids:
                    raise self.fail(f"{where}.pops", "must be a non-empty list of POP ids")
                missing = [p for p in ids if p not in by_id]
                if missing:
                    raise self.fail(
                        f"{where}.pops", f"unknown POP {missing[0]!r} (known: {', '.join(by_id)})"
                    )
                if len(set(ids)) != len(ids):
                    raise self.fail(f"{where}.pops", "lists a POP twice")
                pool = tuple(by_id[p] for p in ids)
            found[name] = Service(
                name=name,
                pops=pool,
                ttl=self.integer(entry.get("ttl", ttl), f"{where}.ttl", 0, MAX_TTL),
                answers=self.integer(entry.get("answers", answers), f"{where}.answers", 1, 64),
            )
        return tuple(found.values())
