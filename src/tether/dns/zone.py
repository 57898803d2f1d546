"""What the server answers for a name and type: the zone's contents, no wire format.

:meth:`Zone.answer` is a pure function of (name, type, class, client subnet, healthy
POPs) → :class:`Answer`, the sections of a response and its return code. The wire layer
(:mod:`tether.dns.wire`) parses queries and renders these answers.

- A/AAAA for a service name: the addresses of the ``answers`` best-ranked healthy POPs
  that have an address of that family, best first (each POP's addresses together);
- SOA and NS at the zone apex, with glue for name servers inside the zone;
- A/AAAA for a name server inside the zone: its glue;
- any other type of an existing name, or a name that only exists as the parent of one
  (an empty non-terminal): NOERROR with no records and the SOA as authority (NODATA);
- a name in the zone that does not exist: NXDOMAIN with the SOA as authority;
- a name outside the zone, or a class other than IN: REFUSED (we are no resolver).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rrset

from tether.dns.config import DnsConfig, Pop, Service
from tether.dns.policy import IPNetwork, choose, rank

A = dns.rdatatype.A
AAAA = dns.rdatatype.AAAA
_ADDRESS_TYPES = (A, AAAA)
_MEMO_LIMIT = 1 << 16  # rankings remembered per zone; cleared whole when full


@dataclass(frozen=True, slots=True)
class Answer:
    """The content of one response.

    ``scope`` is the number of subnet bits the answer depends on (the ECS scope prefix
    length to report): the subnet's length for service addresses, 0 for everything
    else. ``pops`` lists the POPs named, best first.
    """

    rcode: dns.rcode.Rcode
    authoritative: bool
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()
    additional: tuple[dns.rrset.RRset, ...] = ()
    scope: int = 0
    pops: tuple[str, ...] = field(default=())


REFUSED = Answer(dns.rcode.REFUSED, authoritative=False)
OUTSIDE = "outside"  # a name outside the zone
MISSING = "missing"  # a name in the zone that does not exist


@dataclass(frozen=True, slots=True)
class _Node:
    """A name that exists in the zone, and what it holds."""

    apex: bool
    service: Service | None
    glue: tuple[dns.rrset.RRset, ...]


class Zone:
    """The names of one configuration, ready to answer; build one per configuration."""

    def __init__(self, config: DnsConfig) -> None:
        self.config = config
        self.origin = config.zone
        self.services = {service.name: service for service in config.services}
        self.glue: dict[dns.name.Name, tuple[dns.rrset.RRset, ...]] = {}
        for ns in config.nameservers:
            if ns.name.is_subdomain(self.origin):
                self.glue[ns.name] = tuple(
                    _address_rrset(ns.name, config.soa.ttl, rdtype, addresses)
                    for rdtype, addresses in ((A, ns.ipv4), (AAAA, ns.ipv6))
                    if addresses
                )
        soa = config.soa
        soa_rdata = dns.rdata.from_text(
            dns.rdataclass.IN,
            dns.rdatatype.SOA,
            f"{soa.primary} {soa.contact} {soa.serial} {soa.refresh} {soa.retry}"
            f" {soa.expire} {soa.minimum}",
        )
        self.soa = dns.rrset.from_rdata(self.origin, soa.ttl, soa_rdata)
        # RFC 2308 section 3: a negative answer's SOA has the smaller of its TTL and MINIMUM.
        self.negative_soa = dns.rrset.from_rdata(self.origin, min(soa.ttl, soa.minimum), soa_rdata)
        self.ns = dns.rrset.from_rdata_list(
            self.origin,
            soa.ttl,
            [
                dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NS, ns.name.to_text())
                for ns in config.nameservers
            ],
        )
        self.ns_glue = tuple(
            rrset for ns in config.nameservers for rrset in self.glue.get(ns.name, ())
        )
        # Names that exist only as parents of configured names answer NODATA, not NXDOMAIN
        # (RFC 8020: NXDOMAIN would deny everything below them too).
        nodes: dict[dns.name.Name, _Node] = {}
        for name in (*self.services, *self.glue):
            while name != self.origin and name.is_subdomain(self.origin):
                nodes.setdefault(name, _Node(False, None, ()))
                name = name.parent()
        for name, service in self.services.items():
            nodes[name] = _Node(False, service, ())
        for name, glue in self.glue.items():
            nodes[name] = _Node(False, None, glue)
        apex_service = self.services.get(self.origin)
        nodes[self.origin] = _Node(True, apex_service, self.glue.get(self.origin, ()))
        self.nodes = nodes
        self.nxdomain = Answer(dns.rcode.NXDOMAIN, True, authority=(self.negative_soa,))
        self.nodata = Answer(dns.rcode.NOERROR, True, authority=(self.negative_soa,))
        # Looking a name up by its labels as sent (a tuple of bytes) skips dnspython's
        # case-folding hash and comparison, a good part of the cost of a query.
        self._lookups: dict[tuple[bytes, ...], _Node | str] = {}
        # Keys of bytes and ints, values shared between subnets: the garbage collector
        # does not track such keys, and sees one tuple per distinct order, not per subnet.
        self._rankings: dict[tuple[tuple[bytes, ...], bytes, int], tuple[Pop, ...]] = {}
        self._orders: dict[tuple[str, ...], tuple[Pop, ...]] = {}
        self._rrsets: dict[tuple[dns.name.Name, int, tuple[str, ...]], dns.rrset.RRset] = {}

    def lookup(self, qname: dns.name.Name) -> _Node | str:
        """The node of ``qname``, or ``OUTSIDE`` (not in the zone) or ``MISSING``."""
        found = self._lookups.get(qname.labels)
        if found is None:
            if not qname.is_subdomain(self.origin):
                found = OUTSIDE
            else:
                found = self.nodes.get(qname, MISSING)
            if len(self._lookups) >= _MEMO_LIMIT:
                self._lookups.clear()
            self._lookups[qname.labels] = found
        return found

    def answer(
        self,
        qname: dns.name.Name,
        rdtype: int,
        rdclass: int,
        subnet: IPNetwork,
        healthy: frozenset[str],
    ) -> Answer:
        """The answer to one question; never raises for any name, type or class."""
        if rdclass != dns.rdataclass.IN:
            return REFUSED
        node = self.lookup(qname)
        if isinstance(node, str):
            return REFUSED if node is OUTSIDE else self.nxdomain
        types = _ADDRESS_TYPES if rdtype == dns.rdatatype.ANY else (rdtype,)
        answer: list[dns.rrset.RRset] = []
        additional: list[dns.rrset.RRset] = []
        pops: tuple[str, ...] = ()
        scope = 0
        if node.apex:
            if rdtype in (dns.rdatatype.SOA, dns.rdatatype.ANY):
                answer.append(self.soa)
            if rdtype in (dns.rdatatype.NS, dns.rdatatype.ANY):
                answer.append(self.ns)
                additional.extend(self.ns_glue)
        if node.service is not None:
            for family in types:
                if family in _ADDRESS_TYPES:
                    rrset, chosen = self._service_rrset(node.service, family, subnet, healthy)
                    if rrset is not None:
                        answer.append(rrset)
                        pops = pops or chosen
                        scope = subnet.prefixlen
        for rrset in node.glue:
            if rrset.rdtype in types:
                answer.append(rrset)
        if not answer:
            return self.nodata
        return Answer(
            dns.rcode.NOERROR,
            True,
            answer=tuple(answer),
            additional=tuple(additional),
            scope=scope,
            pops=pops,
        )

    def ranking(self, service: Service, subnet: IPNetwork) -> tuple[Pop, ...]:
        """The service's whole pool ranked for ``subnet``, health aside (memoised)."""
        key = (service.name.labels, subnet.network_address.packed, subnet.prefixlen)
        ranked = self._rankings.get(key)
        if ranked is None:
            if len(self._rankings) >= _MEMO_LIMIT:
                self._rankings.clear()
                self._orders.clear()
            ranked = tuple(rank(subnet, service.pops, self.config.key))
            ranked = self._orders.setdefault(tuple(pop.id for pop in ranked), ranked)
            self._rankings[key] = ranked
        return ranked

    def _service_rrset(
        self, service: Service, rdtype: int, subnet: IPNetwork, healthy: frozenset[str]
    ) -> tuple[dns.rrset.RRset | None, tuple[str, ...]]:
        # Filtering a rendezvous ranking keeps its order: every score depends on its POP
        # alone, so ranking the whole pool once serves both families.
        ranked = [pop for pop in self.ranking(service, subnet) if _addresses(pop, rdtype)]
        if not ranked:
            return None, ()
        chosen = tuple(pop.id for pop in choose(ranked, healthy, service.answers))
        key = (service.name, rdtype, chosen)
        rrset = self._rrsets.get(key)
        if rrset is None:
            by_id = {pop.id: pop for pop in ranked}
            addresses = [a for pop_id in chosen for a in _addresses(by_id[pop_id], rdtype)]
            rrset = _address_rrset(service.name, service.ttl, rdtype, addresses)
            if len(self._rrsets) >= _MEMO_LIMIT:
                self._rrsets.clear()
            self._rrsets[key] = rrset
        return rrset, chosen


def _addresses(pop: Pop, rdtype: int) -> tuple[object, ...]:
    return pop.ipv4 if rdtype == A else pop.ipv6


def _address_rrset(
    name: dns.name.Name, ttl: int, rdtype: int, addresses: Iterable[object]
) -> dns.rrset.RRset:
    cls = dns.rdtypes.IN.A.A if rdtype == A else dns.rdtypes.IN.AAAA.AAAA
    rdatas = [cls(dns.rdataclass.IN, rdtype, str(address)) for address in addresses]
    # dnspython keeps insertion order in an RRset: the best POP's addresses come first.
    return dns.rrset.from_rdata_list(name, ttl, rdatas)
