"""Which POPs a client should reach: weighted rendezvous hashing of its subnet.

Pure functions: no sockets, no clock, no randomness, no Python ``hash()`` (salted per
process). The same subnet, POPs and key give the same ranking in every process on every
machine, so several ``tether dns`` instances with one config answer alike.

Each POP gets the score ``weight / -ln(u)``, where ``u`` in (0, 1) comes from a keyed
BLAKE2b of (subnet, POP id); POPs are ranked by falling score. This is weighted
rendezvous (highest random weight) hashing: a POP wins a share of subnets proportional
to its weight (``-ln(u)`` is exponential, and the smallest of independent exponentials
with rates ``w_i`` is the i-th with probability ``w_i / sum(w)``), and since every score
depends on its own POP alone, removing a POP moves only the subnets it ranked first,
and adding it back moves exactly those back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Protocol, TypeVar

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

DEFAULT_IPV4_PREFIX = 24
# A /56 is what ISPs commonly delegate to one home or office (RFC 6177).
DEFAULT_IPV6_PREFIX = 56
DEFAULT_KEY = b"tether-dns"
MAX_KEY_BYTES = 64  # BLAKE2b's key limit

_UNIT = 2.0**-53  # u takes the top 53 bits of the digest: exactly what a double holds
_FAMILY_TAG = {4: b"\x04", 6: b"\x06"}


@dataclass(frozen=True, slots=True)
class Masks:
    """How many leading bits of a client address identify its subnet, per family.

    Raises ``ValueError`` for a prefix length outside 0..32 (IPv4) or 0..128 (IPv6).
    """

    ipv4: int = DEFAULT_IPV4_PREFIX
    ipv6: int = DEFAULT_IPV6_PREFIX

    def __post_init__(self) -> None:
        if not 0 <= self.ipv4 <= 32:
            raise ValueError(f"IPv4 prefix length must be 0..32, got {self.ipv4}")
        if not 0 <= self.ipv6 <= 128:
            raise ValueError(f"IPv6 prefix length must be 0..128, got {self.ipv6}")

    def limit(self, version: int) -> int:
        return self.ipv4 if version == 4 else self.ipv6


class Candidate(Protocol):
    """What the ranking needs of a POP: a stable id and a positive weight."""

    @property
    def id(self) -> str: ...

    @property
    def weight(self) -> float: ...


C = TypeVar("C", bound=Candidate)


def client_subnet(
    address: str | IPAddress, source_prefix: int | None = None, masks: Masks = Masks()
) -> IPNetwork:
    """The subnet a client is hashed by.

    ``address`` is the EDNS Client Subnet address when the query carries one (then
    ``source_prefix`` is its SOURCE PREFIX-LENGTH), else the resolver's own address
    (``source_prefix`` None). The prefix used is the configured mask, or the client's
    source prefix when that is shorter: a resolver that reveals only a /16 is hashed by
    that /16, never by bits it did not send. A resolver address that is IPv4-mapped IPv6
    (``::ffff:192.0.2.1``, as a dual-stack socket reports IPv4 peers) counts as the IPv4
    address it maps. Raises ``ValueError`` for something that is
    not an IP address, or a source prefix longer than the address.
    """
    ip = ip_address(address) if isinstance(address, str) else address
    if source_prefix is None and ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    limit = masks.limit(ip.version)
    if source_prefix is not None:
        if not 0 <= source_prefix <= ip.max_prefixlen:
            raise ValueError(f"prefix length {source_prefix} out of range for {ip}")
        limit = min(limit, source_prefix)
    if ip.version == 4:
        return IPv4Network((int(ip), limit), strict=False)
    return IPv6Network((int(ip), limit), strict=False)


def unit_hash(key: bytes, subnet: IPNetwork, pop_id: str) -> float:
    """A number in the open interval (0, 1), uniform over subnets, fixed per input."""
    message = b"".join(
        (
            _FAMILY_TAG[subnet.version],
            subnet.prefixlen.to_bytes(1, "big"),
            subnet.network_address.packed,
            pop_id.encode(),
        )
    )
    digest = hashlib.blake2b(message, key=key, digest_size=8).digest()
    # +0.5 keeps u off both 0 (ln would be -inf) and 1 (ln would be 0).
    return ((int.from_bytes(digest, "big") >> 11) + 0.5) * _UNIT


def score(key: bytes, subnet: IPNetwork, candidate: Candidate) -> float:
    """``weight / -ln(u)``: finite and positive for every positive weight."""
    return candidate.weight / -math.log(unit_hash(key, subnet, candidate.id))


def rank(subnet: IPNetwork, candidates: Iterable[C], key: bytes = DEFAULT_KEY) -> list[C]:
    """Every candidate, best first (falling score; equal scores, practically never seen,
    fall back to the id so the order stays total)."""
    scored = [(score(key, subnet, c), c.id, c) for c in candidates]
    scored.sort(key=lambda item: (-item[0], item[1]))
    return [c for _, _, c in scored]


def choose(ranked: Sequence[C], healthy: Container[str], count: int) -> list[C]:
    """The first ``count`` healthy candidates of a ranking, in rank order.

    If none is healthy, the first ``count`` of all: a health checker that lost its own
    network must not take the whole service out of the DNS.
    """
    up = [c for c in ranked if c.id in healthy]
    return (up or list(ranked))[:count]
