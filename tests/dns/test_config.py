"""The configuration file: a full example parses; every mistake names its place."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import dns.name
import pytest

from tether.dns.config import ConfigError, load_config, parse_config

from .helpers import BASE, config_data

EXAMPLE = """
zone = "example.net"
ttl = 20
answers = 2
ipv4_prefix = 22
ipv6_prefix = 48
hash_key = "shared secret"

[soa]
contact = "ops.example.org."
serial = 2024010101

[[nameserver]]
name = "ns1"
ipv4 = ["192.0.2.53"]

[[nameserver]]
name = "ns.example.org."

[health]
interval = 5
timeout = 2
rise = 3
fall = 4

[[pop]]
id = "fra"
ipv4 = ["192.0.2.10", "192.0.2.11"]
ipv6 = ["2001:db8:10::1"]
weight = 2.5
health = "http://192.0.2.10:8080/ready"

[[pop]]
id = "ams"
ipv6 = ["2001:db8:20::1"]

[[service]]
name = "upload"

[[service]]
name = "@"
pops = ["ams"]
ttl = 60
answers = 1
"""


def test_a_full_example(tmp_path: Path) -> None:
    path = tmp_path / "dns.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert config.zone == dns.name.from_text("example.net.")
    assert (config.masks.ipv4, config.masks.ipv6, config.key) == (22, 48, b"shared secret")
    assert config.soa.primary == dns.name.from_text("ns1.example.net.")
    assert config.soa.contact == dns.name.from_text("ops.example.org.")
    assert config.soa.serial == 2024010101
    assert [str(ns.name) for ns in config.nameservers] == ["ns1.example.net.", "ns.example.org."]
    assert (config.health.interval, config.health.rise, config.health.fall) == (5.0, 3, 4)
    fra, ams = config.pops
    assert fra.ipv4 == (IPv4Address("192.0.2.10"), IPv4Address("192.0.2.11"))
    assert (fra.weight, fra.health) == (2.5, "http://192.0.2.10:8080/ready")
    assert (ams.weight, ams.ipv4, ams.health) == (1.0, (), None)
    upload, apex = config.services
    assert (str(upload.name), upload.ttl, upload.answers, upload.pops) == (
        "upload.example.net.",
        20,
        2,
        (fra, ams),
    )
    assert (apex.name, apex.ttl, apex.answers, apex.pops) == (config.zone, 60, 1, (ams,))


def test_the_test_base_config_parses() -> None:
    config = parse_config(BASE)
    assert [p.id for p in config.pops] == ["fra", "ams", "nyc"]


def _pop(**changes: Any) -> list[dict[str, Any]]:
    return [{**BASE["pop"][0], **changes}]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"zone": None}, "zone: missing"),
        ({"zone": "bad..name"}, "zone: not a DNS name"),
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"ttl": -1}, "ttl: must be a whole number"),
        ({"ttl": True}, "ttl: must be a whole number"),
        ({"answers": 0}, "answers: must be a whole number in 1..64"),
        ({"ipv4_prefix": 33}, "ipv4_prefix: must be a whole number in 0..32"),
        ({"ipv6_prefix": 129}, "ipv6_prefix: must be a whole number in 0..128"),
        ({"hash_key": "k" * 65}, "hash_key: at most 64 bytes"),
        ({"nameserver": []}, "at least one [[nameserver]]"),
        ({"nameserver": [{"name": "ns1"}]}, "needs ipv4 or ipv6 glue"),
        ({"health": {"interval": 0}}, "health.interval: must be more than 0"),
        ({"health": {"rise": 0}}, "health.rise: must be a whole number in 1..100"),
        ({"health": {"every": 2}}, "health: unknown key 'every'"),
        ({"pop": []}, "at least one [[pop]]"),
        ({"pop": [{"ipv4": ["192.0.2.1"]}]}, "pop[0]: missing key 'id'"),
        ({"pop": _pop(id="fra west")}, "use letters, digits"),
        ({"pop": _pop(weight=0)}, "pop 'fra'.weight: must be a number above 0"),
        ({"pop": _pop(weight="2")}, "pop 'fra'.weight: must be a number above 0"),
        ({"pop": _pop(wieght=2)}, "unknown key 'wieght'"),
        ({"pop": _pop(ipv4=["2001:db8::1"])}, "is not an IPv4 address"),
        ({"pop": _pop(ipv4=["192.0.2.300"])}, "not an IP address"),
        ({"pop": _pop(ipv4=["192.0.2.1", "192.0.2.1"])}, "listed twice"),
        ({"pop": _pop(ipv4=[], ipv6=[])}, "needs at least one address"),
        ({"pop": _pop(health="ftp://x/ready")}, "must be an http:// or https:// URL"),
        ({"pop": [*BASE["pop"], BASE["pop"][0]]}, "pop 'fra': id is used twice"),
        ({"service": []}, "at least one [[service]]"),
        ({"service": [{"name": "www.example.org."}]}, "lies outside the zone"),
        ({"service": [{"name": "a"}, {"name": "a"}]}, "is listed twice"),
        ({"service": [{"name": "a", "pops": ["lon"]}]}, "unknown POP 'lon'"),
        ({"service": [{"name": "a", "pops": []}]}, "must be a non-empty list"),
        ({"service": [{"name": "ns1"}]}, "name already used by nameserver"),
    ],
)
def test_mistakes_are_reported_with_their_place(changes: dict[str, Any], message: str) -> None:
    data = config_data(**changes)
    for key, value in changes.items():
        if value is None:
            del data[key]
    with pytest.raises(ConfigError) as caught:
        parse_config(data, "dns.toml")
    assert str(caught.value).startswith("dns.toml: ")
    assert message in str(caught.value)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('zone = "example.net"\n[[pop]\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
