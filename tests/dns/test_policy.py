"""The ranking: deterministic, weight-proportional, minimal movement, per subnet."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network

import pytest

from tether.dns.policy import (
    DEFAULT_KEY,
    IPNetwork,
    Masks,
    choose,
    client_subnet,
    rank,
    score,
    unit_hash,
)


@dataclass(frozen=True)
class P:
    id: str
    weight: float = 1.0


def random_v4(rng: random.Random) -> IPv4Address:
    return IPv4Address(rng.getrandbits(32))


def random_v6(rng: random.Random) -> IPv6Address:
    return IPv6Address(rng.getrandbits(128))


def first_choices(
    pops: list[P], subnets: Sequence[IPNetwork], key: bytes = DEFAULT_KEY
) -> list[str]:
    return [rank(s, pops, key)[0].id for s in subnets]


# ------------------------------------------------------------------ subnets


@pytest.mark.parametrize(
    ("address", "source_prefix", "expected"),
    [
        ("203.0.113.77", None, "203.0.113.0/24"),  # the resolver's address, masked
        ("203.0.113.0", 24, "203.0.113.0/24"),  # ECS /24
        ("203.0.113.77", 32, "203.0.113.0/24"),  # ECS longer than the mask: cut to it
        ("203.0.0.0", 16, "203.0.0.0/16"),  # ECS shorter: its own length, never more
        ("2001:db8:1:2ff::1", None, "2001:db8:1:200::/56"),
        ("2001:db8:1::", 48, "2001:db8:1::/48"),
        ("::ffff:198.51.100.9", None, "198.51.100.0/24"),  # dual-stack socket peer
    ],
)
def test_client_subnet(address: str, source_prefix: int | None, expected: str) -> None:
    assert client_subnet(address, source_prefix) == ip_network(expected)


def test_masks_are_configurable() -> None:
    masks = Masks(ipv4=20, ipv6=48)
    assert client_subnet("203.0.113.77", None, masks) == ip_network("203.0.112.0/20")
    assert client_subnet("2001:db8:1:2ff::1", 64, masks) == ip_network("2001:db8:1::/48")


@pytest.mark.parametrize(
    ("address", "source_prefix"), [("not-an-ip", None), ("203.0.113.0", 33), ("::", 129)]
)
def test_bad_subnets_raise_value_error(address: str, source_prefix: int | None) -> None:
    with pytest.raises(ValueError):
        client_subnet(address, source_prefix)


@pytest.mark.parametrize(("ipv4", "ipv6"), [(33, 56), (24, 129), (-1, 56)])
def test_bad_masks(ipv4: int, ipv6: int) -> None:
    with pytest.raises(ValueError):
        Masks(ipv4, ipv6)


# ------------------------------------------------------------------ the hash


def test_unit_hash_stays_inside_the_open_interval() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        subnet = client_subnet(random_v4(rng))
        u = unit_hash(DEFAULT_KEY, subnet, "pop")
        assert 0.0 < u < 1.0
        assert score(DEFAULT_KEY, subnet, P("pop", 1e6)) > 0


def test_the_key_changes_the_ranking() -> None:
    pops = [P(f"p{i}") for i in range(4)]
    rng = random.Random(8)
    subnets = [client_subnet(random_v4(rng)) for _ in range(200)]
    assert first_choices(pops, subnets) != first_choices(pops, subnets, b"another key")


def test_the_same_subnet_ranks_alike_whatever_the_host_bits() -> None:
    pops = [P(f"p{i}") for i in range(8)]
    a = rank(client_subnet("198.51.100.1"), pops)
    b = rank(client_subnet("198.51.100.254"), pops)
    c = rank(client_subnet("198.51.100.0", 24), pops)
    assert a == b == c


_CHILD = """
import json, sys
from tether.dns.policy import client_subnet, rank
from collections.abc import Sequence
from dataclasses import dataclass
@dataclass(frozen=True)
class P:
    id: str
    weight: float = 1.0
pops = [P("fra", 3), P("ams", 1), P("nyc", 2), P("sin", 0.5)]
out = [[p.id for p in rank(client_subnet(a), pops)] for a in json.load(sys.stdin)]
json.dump(out, sys.stdout)
"""


def test_rankings_agree_across_processes() -> None:
    """Another interpreter (with another hash seed) ranks every subnet the same way."""
    rng = random.Random(9)
    subnets = [str(random_v4(rng)) for _ in range(500)] + [str(random_v6(rng)) for _ in range(500)]
    pops = [P("fra", 3), P("ams", 1), P("nyc", 2), P("sin", 0.5)]
    here = [[p.id for p in rank(client_subnet(a), pops)] for a in subnets]
    for seed in ("0", "12345"):
        child = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(subnets),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert json.loads(child.stdout) == here


def test_known_answers_never_change() -> None:
    """Pinned values: a change here moves real clients between POPs on upgrade."""
    pops = [P("fra", 2), P("ams", 1), P("nyc", 1)]
    assert [p.id for p in rank(client_subnet("203.0.113.7"), pops)] == ["fra", "nyc", "ams"]
    assert [p.id for p in rank(client_subnet("2001:db8:1::"), pops)] == ["fra", "nyc", "ams"]
    assert unit_hash(DEFAULT_KEY, client_subnet("203.0.113.7"), "fra") == pytest.approx(
        0.9434901478663067, abs=1e-15
    )


# ------------------------------------------------------------------ shares


@pytest.mark.parametrize("family", [4, 6])
def test_shares_follow_weights(family: int) -> None:
    """Over 100,000 random subnets each POP's share of first places is within ±2 points
    of its weight share."""
    pops = [P("a", 1), P("b", 2), P("c", 3), P("d", 4), P("e", 0.5)]
    total = sum(p.weight for p in pops)
    rng = random.Random(10 + family)
    make = random_v4 if family == 4 else random_v6
    n = 100_000
    counts = Counter(rank(client_subnet(make(rng)), pops)[0].id for _ in range(n))
    for pop in pops:
        assert abs(counts[pop.id] / n - pop.weight / total) <= 0.02, (pop, counts)


# ------------------------------------------------------------------ movement


def test_removing_a_pop_moves_only_its_subnets_and_adding_it_back_restores_them() -> None:
    n_pops = 5
    pops = [P(f"pop{i}") for i in range(n_pops)]
    rng = random.Random(11)
    subnets = [client_subnet(random_v4(rng)) for _ in range(50_000)]
    before = first_choices(pops, subnets)
    gone = pops[2]
    during = first_choices([p for p in pops if p != gone], subnets)
    moved = [i for i, (b, d) in enumerate(zip(before, during, strict=True)) if b != d]
    assert all(before[i] == gone.id for i in moved)
    assert {i for i, b in enumerate(before) if b == gone.id} == set(moved)
    assert abs(len(moved) / len(subnets) - 1 / n_pops) < 0.02
    after = first_choices(pops, subnets)
    assert after == before


def test_a_removed_pop_leaves_the_rest_of_every_ranking_in_order() -> None:
    pops = [P(f"pop{i}", 1 + i % 3) for i in range(6)]
    rng = random.Random(12)
    for _ in range(2000):
        subnet = client_subnet(random_v6(rng))
        full = rank(subnet, pops)
        without = rank(subnet, [p for p in pops if p.id != "pop3"])
        assert without == [p for p in full if p.id != "pop3"]


def test_raising_a_weight_only_pulls_subnets_towards_that_pop() -> None:
    pops = [P("a"), P("b"), P("c")]
    heavier = [P("a"), P("b", 2), P("c")]
    rng = random.Random(13)
    subnets = [client_subnet(random_v4(rng)) for _ in range(20_000)]
    for old, new in zip(first_choices(pops, subnets), first_choices(heavier, subnets), strict=True):
        assert old == new or new == "b"


# ------------------------------------------------------------------ choosing


def test_choose_skips_unhealthy_pops_in_rank_order() -> None:
    ranked = [P("a"), P("b"), P("c"), P("d")]
    assert [p.id for p in choose(ranked, {"a", "b", "c", "d"}, 2)] == ["a", "b"]
    assert [p.id for p in choose(ranked, {"b", "d"}, 2)] == ["b", "d"]
    assert [p.id for p in choose(ranked, {"c"}, 3)] == ["c"]


def test_when_every_pop_is_down_choose_answers_with_all() -> None:
    ranked = [P("a"), P("b"), P("c")]
    assert [p.id for p in choose(ranked, set(), 1)] == ["a"]
    assert [p.id for p in choose(ranked, {"unknown"}, 5)] == ["a", "b", "c"]
