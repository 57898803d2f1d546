"""Query bytes to response bytes, without sockets: rcodes, ECS, EDNS, TC, caches."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv6Address

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.dns.policy import client_subnet, rank
from tether.dns.wire import Responder

from .helpers import addresses, ecs_of, make_config, query

RESOLVER = "198.51.100.7"


def ask(
    responder: Responder, message: dns.message.Message, source: str = RESOLVER, *, tcp: bool = False
) -> dns.message.Message:
    out = responder.respond(message.to_wire(), source, tcp=tcp)
    assert out is not None
    response = dns.message.from_wire(out)
    assert response.id == message.id
    assert response.flags & dns.flags.QR
    return response


@pytest.fixture
def responder() -> Responder:
    return Responder(make_config())


def expected_first(subnet: str, family: str = "A") -> str:
    config = make_config()
    service = config.services[0]
    ranked = rank(
        client_subnet(subnet.split("/")[0], int(subnet.split("/")[1])), service.pops, config.key
    )
    pop = next(p for p in ranked if (p.ipv4 if family == "A" else p.ipv6))
    return str((pop.ipv4 if family == "A" else pop.ipv6)[0])


def test_a_and_aaaa_follow_the_ranking(responder: Responder) -> None:
    for subnet in ("203.0.113.0/24", "192.0.2.0/24", "2001:db8:77::/56", "10.1.0.0/16"):
        for family in ("A", "AAAA"):
            response = ask(responder, query("upload.example.net.", family, ecs=subnet))
            assert response.rcode() == dns.rcode.NOERROR
            assert response.flags & dns.flags.AA
            assert addresses(response) == [expected_first(subnet, family)]
            assert response.answer[0].ttl == 30


def test_answers_list_the_best_pops_in_rank_order(responder: Responder) -> None:
    config = make_config()
    service = config.services[1]  # files.cdn: answers = 2
    for i in range(50):
        subnet = f"203.0.{i}.0/24"
        ranked = rank(client_subnet(f"203.0.{i}.0", 24), service.pops, config.key)
        response = ask(responder, query("files.cdn.example.net.", ecs=subnet))
        assert addresses(response) == [str(p.ipv4[0]) for p in ranked[:2]]


def test_ecs_present_versus_absent(responder: Responder) -> None:
    """Without ECS the resolver's own /24 decides; with ECS the client's subnet does, and
    the answer says (scope) how much of it was used."""
    plain = ask(responder, query("upload.example.net."), source="203.0.113.99")
    assert ecs_of(plain) is None and plain.edns < 0
    with_ecs = ask(
        responder, query("upload.example.net.", ecs="203.0.113.0/24"), source="192.0.2.1"
    )
    assert addresses(with_ecs) == addresses(plain)
    option = ecs_of(with_ecs)
    assert option is not None
    assert (option.address, option.srclen, option.scopelen) == ("203.0.113.0", 24, 24)
    # A longer source prefix is echoed as sent, and hashed at the configured /24.
    longer = ask(responder, query("upload.example.net.", ecs="203.0.113.77/32"))
    option = ecs_of(longer)
    assert option is not None
    assert (option.address, option.srclen, option.scopelen) == ("203.0.113.77", 32, 24)
    assert addresses(longer) == addresses(plain)
    # A shorter one is used as it is: the scope says /16.
    shorter = ask(responder, query("upload.example.net.", ecs="203.0.0.0/16"))
    assert ecs_of(shorter).scopelen == 16  # type: ignore[union-attr]
    assert addresses(shorter) == [expected_first("203.0.0.0/16")]
    # SOURCE PREFIX-LENGTH 0: the client opts out, the resolver's address decides, scope 0.
    opted_out = ask(responder, query("upload.example.net.", ecs="0.0.0.0/0"), source="203.0.113.5")
    assert ecs_of(opted_out).scopelen == 0  # type: ignore[union-attr]
    assert addresses(opted_out) == addresses(plain)


def test_ipv6_clients_are_hashed_by_their_56(responder: Responder) -> None:
    a = ask(responder, query("upload.example.net.", "AAAA"), source="2001:db8:5:ab01::1")
    b = ask(responder, query("upload.example.net.", "AAAA"), source="2001:db8:5:abff::9")
    assert addresses(a) == addresses(b) == [expected_first("2001:db8:5:ab00::/56", "AAAA")]
    ecs = ask(responder, query("upload.example.net.", "AAAA", ecs="2001:db8:5:ab00::/56"))
    assert addresses(ecs) == addresses(a)
    assert ecs_of(ecs).scopelen == 56  # type: ignore[union-attr]


def test_a_family_without_addresses_skips_pops_that_lack_it(responder: Responder) -> None:
    # nyc has no IPv6 address: AAAA answers come from fra or ams only.
    seen = set()
    for i in range(200):
        response = ask(responder, query("upload.example.net.", "AAAA", ecs=f"10.{i}.0.0/16"))
        seen.update(addresses(response))
    assert seen == {"2001:db8:10::1", "2001:db8:20::1"}


def test_zone_apex_soa_ns_and_glue(responder: Responder) -> None:
    soa = ask(responder, query("example.net.", "SOA"))
    assert soa.rcode() == dns.rcode.NOERROR and soa.flags & dns.flags.AA
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    assert str(soa.answer[0][0].mname) == "ns1.example.net."
    ns = ask(responder, query("example.net.", "NS"))
    assert [r.to_text() for r in ns.answer[0]] == ["ns1.example.net."]
    assert sorted(rr.rdtype for rr in ns.additional) == [dns.rdatatype.A, dns.rdatatype.AAAA]
    glue = ask(responder, query("ns1.example.net.", "A"))
    assert addresses(glue) == ["192.0.2.53"]


def test_nxdomain_nodata_and_empty_non_terminals(responder: Responder) -> None:
    missing = ask(responder, query("nope.example.net."))
    assert missing.rcode() == dns.rcode.NXDOMAIN and missing.flags & dns.flags.AA
    assert missing.authority[0].rdtype == dns.rdatatype.SOA
    assert missing.authority[0].ttl == 60  # min(SOA TTL, MINIMUM)
    below = ask(responder, query("x.upload.example.net."))
    assert below.rcode() == dns.rcode.NXDOMAIN
    for name, rdtype in [
        ("upload.example.net.", "MX"),
        ("cdn.example.net.", "A"),
        ("example.net.", "A"),
    ]:
        nodata = ask(responder, query(name, rdtype))
        assert nodata.rcode() == dns.rcode.NOERROR, name
        assert nodata.answer == [] and nodata.authority[0].rdtype == dns.rdatatype.SOA


def test_names_are_case_insensitive_and_echoed_as_sent(responder: Responder) -> None:
    response = ask(responder, query("UpLoAd.ExAmple.NET.", ecs="203.0.113.0/24"))
    assert response.rcode() == dns.rcode.NOERROR
    assert response.question[0].name.to_text() == "UpLoAd.ExAmple.NET."
    assert addresses(response) == [expected_first("203.0.113.0/24")]


def test_refused_outside_the_zone_and_for_other_classes(responder: Responder) -> None:
    for message in (query("example.org."), query("net."), query("upload.example.net.")):
        if message.question[0].name.to_text() == "upload.example.net.":
            message = dns.message.make_query("upload.example.net.", "A", rdclass="CH")
        response = ask(responder, message)
        assert response.rcode() == dns.rcode.REFUSED
        assert not response.flags & dns.flags.AA


def test_other_opcodes_versions_and_question_counts(responder: Responder) -> None:
    notify = query("example.net.", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert ask(responder, notify).rcode() == dns.rcode.NOTIMP
    future = dns.message.make_query("upload.example.net.", "A", use_edns=1)
    response = ask(responder, future)
    assert response.rcode() == dns.rcode.BADVERS and response.edns == 0
    two = query("upload.example.net.")
    two.question.append(query("example.net.", "SOA").question[0])
    assert ask(responder, two).rcode() == dns.rcode.FORMERR
    two_ecs = dns.message.make_query(
        "upload.example.net.",
        "A",
        use_edns=0,
        options=[dns.edns.ECSOption("203.0.113.0", 24), dns.edns.ECSOption("192.0.2.0", 24)],
    )
    assert ask(responder, two_ecs).rcode() == dns.rcode.FORMERR


def test_garbage_gets_formerr_and_responses_get_silence(responder: Responder) -> None:
    assert responder.respond(b"", RESOLVER) is None
    assert responder.respond(b"\x12\x34\x01", RESOLVER) is None
    out = responder.respond(b"\x12\x34\x01\x00" + b"\x00\x01" + b"\xff" * 20, RESOLVER)
    assert out is not None
    response = dns.message.from_wire(out)
    assert (response.id, response.rcode()) == (0x1234, dns.rcode.FORMERR)
    reply = dns.message.make_response(query("upload.example.net.")).to_wire()
    assert responder.respond(reply, RESOLVER) is None  # never answer an answer
    assert responder.counters.dropped == 3


def _big_config() -> Responder:
    many = [f"192.0.2.{i}" for i in range(1, 61)]
    return Responder(
        make_config(
            pop=[{"id": "big", "ipv4": many, "ipv6": ["2001:db8::1"]}],
            service=[{"name": "upload"}],
        )
    )


def test_truncation_over_udp_and_the_full_answer_over_tcp() -> None:
    responder = _big_config()
    small = ask(responder, query("upload.example.net."))  # no EDNS: 512 bytes
    assert small.flags & dns.flags.TC
    assert small.answer == []
    edns = ask(responder, query("upload.example.net.", edns=True, payload=1232))
    assert not edns.flags & dns.flags.TC
    assert len(addresses(edns)) == 60
    tiny_edns = ask(responder, query("upload.example.net.", ecs="203.0.113.0/24", payload=600))
    assert tiny_edns.flags & dns.flags.TC
    assert ecs_of(tiny_edns) is not None  # the OPT record survives truncation
    tcp = ask(responder, query("upload.example.net."), tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert len(addresses(tcp)) == 60


def test_cached_and_patched_responses_equal_freshly_rendered_ones() -> None:
    """The packet cache and the response templates are invisible: for random queries,
    a warm responder and a cold one (every query rendered by dnspython) give the same
    bytes."""
    rng = random.Random(14)
    warm = Responder(make_config())
    names = [
        "upload.example.net.",
        "UPLOAD.example.net.",
        "files.cdn.example.net.",
        "nope.example.net.",
        "example.net.",
    ]
    for _ in range(3000):
        name = rng.choice(names)
        rdtype = rng.choice(["A", "AAAA", "SOA", "MX"])
        kind = rng.randrange(4)
        if kind == 0:
            message = query(name, rdtype)
        elif kind == 1:
            message = query(name, rdtype, edns=True, payload=rng.choice([512, 1232, 4096]))
        elif kind == 2:
            prefix = rng.choice([0, 8, 16, 20, 24, 25, 32])
            address = client_subnet(IPv4Address(rng.getrandbits(32)), prefix)
            message = query(name, rdtype, ecs=f"{address.network_address}/{prefix}")
        else:
            prefix = rng.choice([0, 32, 48, 56, 64, 128])
            address = client_subnet(IPv6Address(rng.getrandbits(128)), prefix)
            message = query(name, rdtype, ecs=f"{address.network_address}/{prefix}")
        message.id = rng.randrange(65536)
        if rng.random() < 0.3:
            message.flags &= ~dns.flags.RD
        source = rng.choice([RESOLVER, "203.0.113.1", "2001:db8::1"])
        wire = message.to_wire()
        cold = Responder(make_config(), cache_entries=0)
        assert warm.respond(wire, source) == cold.respond(wire, source), message.to_text()
    assert warm.counters.cache_hits > 0


def test_health_changes_reach_cached_answers(responder: Responder) -> None:
    message = query("upload.example.net.", ecs="203.0.113.0/24")
    first = addresses(ask(responder, message))
    top = next(p for p in make_config().pops if str(p.ipv4[0]) == first[0])
    responder.set_healthy(frozenset({"fra", "ams", "nyc"} - {top.id}))
    moved = addresses(ask(responder, message))
    assert moved != first
    responder.set_healthy(frozenset())  # all down: answer anyway, as if all were up
    assert addresses(ask(responder, message)) == first
    responder.set_healthy(frozenset({"fra", "ams", "nyc"}))
    assert addresses(ask(responder, message)) == first


def test_counters(responder: Responder) -> None:
    ask(responder, query("upload.example.net.", ecs="203.0.113.0/24"))
    ask(responder, query("upload.example.net.", ecs="203.0.113.0/24"))
    ask(responder, query("nope.example.net."))
    ask(responder, query("example.org."), tcp=True)
    counters = responder.counters
    assert counters.queries == {"udp": 3, "tcp": 1}
    assert counters.responses == {"NOERROR": 2, "NXDOMAIN": 1, "REFUSED": 1}
    assert sum(counters.answers.values()) == 2 and counters.cache_hits == 1
    text = counters.render()
    assert 'tether_dns_queries_total{transport="udp"} 3' in text
    assert 'tether_dns_responses_total{rcode="NXDOMAIN"} 1' in text


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_get_an_answer_or_silence_never_an_exception(wire: bytes) -> None:
    responder = Responder(make_config())
    out = responder.respond(wire, RESOLVER)
    if out is not None:
        response = dns.message.from_wire(out)
        assert response.flags & dns.flags.QR
        assert out[:2] == wire[:2]


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_queries_never_raise(data: st.DataObject) -> None:
    wire = bytearray(query("upload.example.net.", ecs="203.0.113.0/24").to_wire())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(wire) - 1))
        wire[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    responder = Responder(make_config())
    for candidate in (bytes(wire), bytes(wire[:cut])):
        out = responder.respond(candidate, RESOLVER)
        if out is not None:
            dns.message.from_wire(out)
