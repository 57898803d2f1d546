"""An HAProxy configuration for a tether cluster (checked with Debian's HAProxy 2.6).

Two backends over the same nodes: ``tether_uploads`` routes a request for an existing
upload to the node its URL names (``use-server`` on a path prefix: one string compare per
node), else by a consistent hash of the path; ``tether_new`` takes creation requests and
everything else by least connections, its servers tracking the first backend's health.
"""

from __future__ import annotations

from tether.lb.cluster import (
    ROUTING_IS_NOT_CORRECTNESS,
    Cluster,
    check_user,
    duration_text,
    preamble,
)


def render(cluster: Cluster, *, source: str = "cluster.toml", user: str | None = "haproxy") -> str:
    """The whole ``haproxy.cfg`` for ``cluster``. ``user``: drop root to this user and its
    group after binding (None: run as whoever starts HAProxy). ``ValueError`` for a user
    name the configuration could not hold."""
    if user is not None:
        check_user(user)
    source = " ".join(source.splitlines())  # it goes into comments
    t = cluster.timeouts
    h = cluster.health
    base = cluster.base_path
    lines = [
        *preamble(
            "HAProxy",
            "haproxy",
            cluster,
            source,
            [
                "# Install (HAProxy 2.4 or later; checked with Debian's 2.6):",
                f"#   tether lb haproxy --cluster {source} > /etc/haproxy/haproxy.cfg",
                "#   haproxy -c -f /etc/haproxy/haproxy.cfg && systemctl reload haproxy",
            ],
        ),
        "#   - a request for an existing upload goes to the node its URL names while that",
        f"#     node passes its health check (GET {h.path}); otherwise (no node in the URL, a",
        "#     node not listed here, or that node down) to a node chosen by a consistent",
        "#     hash of the URL, so the upload still stays on one node;",
        "#   - a connection a node refuses is tried again on another node.",
        *ROUTING_IS_NOT_CORRECTNESS,
        "",
        "global",
        "    log stdout format raw local0 info",
    ]
    if user:
        lines += [
            "    # Bind the ports, then give up root.",
            f"    user {user}",
            f"    group {user}",
        ]
    lines += [
        "",
        "defaults",
        "    mode http",
        "    log global",
        "    option httplog",
        "    option dontlognull",
        "    # Request bodies stream through HAProxy's buffers (16 KiB each, tune.bufsize)",
        "    # whatever the upload's size: no 'option http-buffer-request', which would hold",
        "    # a body back until it is complete. No size limit either: tether enforces",
        "    # --max-size itself.",
        "    #",
        "    # Every timeout below is an idle time, never a bound on a whole request: an",
        "    # upload of many GB passes for as long as its bytes flow.",
        f"    timeout connect {duration_text(t.connect)}",
        "    # A client silent this long is cut. Keep it above tether serve's --body-timeout",
        "    # (60 s), so that the node ends a stalled body first: it commits the bytes it",
        "    # received and answers 408.",
        f"    timeout client {duration_text(t.client)}",
        "    # A node silent this long is cut. HAProxy does not count the time a node spends",
        "    # receiving a body, only its wait for the answer, which for an upload finished",
        "    # after takeovers includes joining its pieces (a copy of up to the whole file).",
        f"    timeout server {duration_text(t.server)}",
        f"    timeout http-request {duration_text(t.headers)}",
        f"    timeout http-keep-alive {duration_text(t.keepalive)}",
        f"    timeout queue {duration_text(t.connect)}",
        "    # A node that refuses the connection (it died, and its health check has not",
        "    # noticed yet) got nothing of the request: trying another node is safe, for a",
        "    # PATCH too, and that node continues the upload from the shared state.",
        "    retries 3",
        "    retry-on conn-failure",
        "    option redispatch 1",
        "",
        "frontend tether",
    ]
    lines += [f"    bind {endpoint}" for endpoint in cluster.listen]
    lines += [
        "    # tether serve --trust-forwarded believes these headers: they are set here and",
        "    # never passed on from the client (a forged Forwarded header would win).",
        "    http-request del-header Forwarded",
        "    http-request set-header X-Forwarded-For %[src]",
        "    http-request set-header X-Forwarded-Proto https if { ssl_fc }",
        "    http-request set-header X-Forwarded-Proto http unless { ssl_fc }",
        "    acl tether_has_host req.hdr(host) -m found",
        "    http-request set-header X-Forwarded-Host %[req.hdr(host)] if tether_has_host",
        "    http-request del-header X-Forwarded-Host unless tether_has_host",
        f"    acl tether_create path {base} {base[:-1]}",
        f"    acl tether_upload path_beg {base}",
        "    use_backend tether_uploads if tether_upload !tether_create",
        "    default_backend tether_new",
        "",
        "backend tether_uploads",
        "    # Existing uploads. The node named in the URL first: a node id never contains a",
        f"    # dot, so the prefix {base}<node>. names one node only. A server that is down is",
        "    # skipped by use-server, and the hash below decides instead.",
        "    balance uri path-only",
        "    hash-type consistent",
        f"    option httpchk GET {h.path}",
        "    http-check expect status 200",
        f"    default-server check inter {duration_text(h.interval)} rise {h.rise} fall {h.fall}",
    ]
    lines += [f"    use-server {n.id} if {{ path_beg {base}{n.id}. }}" for n in cluster.nodes]
    for node in cluster.nodes:
        drain = "  # weight 0: no new uploads, keeps its own" if node.weight == 0 else ""
        lines.append(f"    server {node.id} {node.address} weight {node.weight}{drain}")
    lines += [
        "",
        "backend tether_new",
        "    # New uploads, and anything that is not an upload URL: the least busy node.",
        "    # Its servers follow the health checks of the same servers in tether_uploads.",
        "    balance leastconn",
    ]
    lines += [
        f"    server {n.id} {n.address} weight {n.weight} track tether_uploads/{n.id}"
        for n in cluster.nodes
    ]
    return "\n".join(lines) + "\n"
