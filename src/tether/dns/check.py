"""``tether dns check``: the ranking and answers for one client subnet, as text.

It goes through the same :class:`~tether.dns.zone.Zone` the server answers from, so
what it prints is what a query with that subnet gets (with the given POPs down).
"""

from __future__ import annotations

from collections.abc import Set
from ipaddress import ip_interface

import dns.rdataclass
import dns.rdatatype

from tether.dns.config import DnsConfig
from tether.dns.policy import client_subnet, score
from tether.dns.zone import Zone


def render_check(config: DnsConfig, subnet_text: str, down: Set[str] = frozenset()) -> str:
    """The report for ``subnet_text``: an address (masked as configured, as for a
    resolver's own address) or ``address/length`` (as an ECS option would send it).

    Raises ``ValueError`` for something that is neither, or an unknown POP in ``down``.
    """
    known = {pop.id for pop in config.pops}
    unknown = sorted(set(down) - known)
    if unknown:
        raise ValueError(f"unknown POP {unknown[0]!r} (known: {', '.join(sorted(known))})")
    try:
        interface = ip_interface(subnet_text.strip())
    except ValueError:
        raise ValueError(f"not an address or subnet: {subnet_text!r}") from None
    source_prefix = interface.network.prefixlen if "/" in subnet_text else None
    subnet = client_subnet(interface.ip, source_prefix, config.masks)
    healthy = frozenset(known - set(down))
    zone = Zone(config)

    lines = [f"client subnet {subnet} (hash key {config.key.decode(errors='replace')!r})"]
    if not healthy:
        lines.append("every POP is down: answers name all of them, as the server would")
    for service in config.services:
        lines.append("")
        lines.append(f"{service.name}  (ttl {service.ttl}, answers {service.answers})")
        lines.append(f"  {'rank':>4}  {'pop':<16} {'weight':>8} {'score':>10}  state")
        for position, pop in enumerate(zone.ranking(service, subnet), start=1):
            state = "down" if pop.id in down else "up"
            value = score(config.key, subnet, pop)
            lines.append(f"  {position:>4}  {pop.id:<16} {pop.weight:>8g} {value:>10.4f}  {state}")
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            answer = zone.answer(service.name, rdtype, dns.rdataclass.IN, subnet, healthy)
            records = [rdata.to_text() for rrset in answer.answer for rdata in rrset]
            name = dns.rdatatype.to_text(rdtype)
            if records:
                pops = ",".join(answer.pops)
                lines.append(
                    f"  {name:<4} → {' '.join(records)}  (from {pops}; ECS scope /{answer.scope})"
                )
            else:
                lines.append(f"  {name:<4} → no addresses of this family")
    return "\n".join(lines) + "\n"
