"""``tether dns``: an authoritative GSLB DNS server.

It answers A/AAAA queries for a few service names with the points of presence (POPs)
that weighted rendezvous hashing of the client's subnet ranks first among the healthy
ones, so a client keeps reaching the same POP while it stays up. Routing is an
optimisation: tether's uploads stay correct whichever POP a client reaches.

- :mod:`tether.dns.policy`: the ranking, a pure function (no sockets, no clock).
- :mod:`tether.dns.config`: the TOML configuration file.
- :mod:`tether.dns.health`: HTTP health checks with rise/fall counts.
- :mod:`tether.dns.zone`: what to answer for a name and type (no wire format).
- :mod:`tether.dns.wire`: bytes in, bytes out: dnspython parsing, EDNS, ECS, truncation.
- :mod:`tether.dns.server`: the UDP and TCP sockets around it.
"""
