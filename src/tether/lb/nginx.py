"""An nginx configuration for a tether cluster (checked with Debian's nginx 1.22).

One ``location ^~ /files/<node>.`` per node sends its uploads to an upstream of that node
with the other nodes as backups; other upload URLs go to an upstream hashing ``$uri``
consistently; creation and everything else to a ``least_conn`` upstream. Open-source
nginx has no active health checks: a node is taken out when connections to it fail.
"""

from __future__ import annotations

import math

from tether.lb.cluster import (
    ROUTING_IS_NOT_CORRECTNESS,
    Cluster,
    Node,
    check_path,
    check_user,
    duration_text,
    preamble,
)

# Temporary directories nginx creates at start whatever the configuration uses.
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def render(
    cluster: Cluster,
    *,
    source: str = "cluster.toml",
    user: str | None = "www-data",
    runtime_dir: str | None = None,
) -> str:
    """The whole ``nginx.conf`` for ``cluster``. ``user``: the workers' user (None: leave
    it to nginx). ``runtime_dir``: put the pid file, logs and temporary directories there
    instead of Debian's places (to run an instance of one's own, or without root).
    ``ValueError`` for a user name or directory the configuration could not hold."""
    if user is not None:
        check_user(user)
    if runtime_dir is not None:
        runtime_dir = check_path(runtime_dir.rstrip("/") or "/")
    source = " ".join(source.splitlines())  # it goes into comments
    t = cluster.timeouts
    h = cluster.health
    base = cluster.base_path
    # A node that fails `fall` connections in a row is left alone for this long, then tried.
    # (nginx reads fail_timeout in whole seconds.)
    fail = f"max_fails={h.fall} fail_timeout={max(1, math.ceil(h.interval * h.rise))}s"
    if runtime_dir is None:
        pid, logs = "/run/nginx.pid", "/var/log/nginx"
    else:
        pid, logs = f"{runtime_dir}/nginx.pid", runtime_dir
    lines = [
        *preamble(
            "nginx",
            "nginx",
            cluster,
            source,
            [
                "# Install: this is a whole nginx.conf (Debian's nginx 1.22 checks it),"
                " in place of",
                "# Debian's, whose sites-enabled/default would also listen on port 80:",
                f"#   tether lb nginx --cluster {source} > /etc/nginx/nginx.conf",
                "#   nginx -t && systemctl reload nginx",
            ],
        ),
        "#   - a request for an existing upload goes to the node its URL names; when that",
        "#     node refuses connections, to the other nodes (backups) until it is back;",
        "#   - other upload URLs (no node in the URL, or a node not listed here) go to a",
        "#     node chosen by a consistent hash of the URL, so the upload stays on one node.",
        *ROUTING_IS_NOT_CORRECTNESS,
        "#",
        "# Health: open-source nginx has no active checks (NGINX Plus would take",
        f"# 'health_check uri={h.path};' in each location), so it judges a node by its",
        "# answers: after `max_fails` failed connections in a row (or 503s to GET or HEAD:",
        "# the node is draining, or has lost a store) it leaves the node out for",
        f"# `fail_timeout`, then tries it again. HAProxy (tether lb haproxy) checks {h.path}.",
        "# nginx (1.22, Debian 12's) takes a 1xx interim response for the final one and",
        "# then stalls the connection, so this configuration asks the nodes for none",
        "# (Tether-No-Interim): IETF draft clients get no 104 through it, which the draft",
        "# allows; they learn the upload's URL from the final response instead.",
        "",
    ]
    if user:
        lines.append(f"user {user};")
    lines += [
        "worker_processes auto;",
        f"pid {pid};",
        f"error_log {logs}/error.log warn;",
        "",
        "events {",
        "    worker_connections 4096;",
        "}",
        "",
        "http {",
        "    log_format tether '$remote_addr [$time_local] \"$request\" $status'",
        "                      ' $request_length $body_bytes_sent $request_time'",
        "                      ' node=$upstream_addr node_status=$upstream_status';",
        f"    access_log {logs}/access.log tether;",
        "    default_type application/octet-stream;",
        "    server_tokens off;",
    ]
    if runtime_dir is not None:
        lines += [f"    {name}_temp_path {runtime_dir}/{name};" for name in _TEMP_PATHS]
    lines += [
        "",
        "    # Request bodies stream through, a buffer at a time: never held whole in memory",
        "    # or in a temporary file, and not size-capped here (tether enforces --max-size).",
        "    # Downloads (GET) stream the same way.",
        "    client_max_body_size 0;",
        "    proxy_request_buffering off;",
        "    proxy_buffering off;",
        "    proxy_http_version 1.1;",
        "",
        "    # Every timeout below is an idle time, never a bound on a whole request: an",
        "    # upload of many GB passes for as long as its bytes flow. Keep",
        "    # client_body_timeout above tether serve's --body-timeout (60 s), so that the",
        "    # node ends a stalled body first (it commits the bytes it received and answers",
        "    # 408). proxy_read_timeout also covers a node joining an upload's pieces after",
        "    # takeovers before it answers (a copy of up to the whole file).",
        f"    client_header_timeout {duration_text(t.headers)};",
        f"    client_body_timeout {duration_text(t.client)};",
        f"    send_timeout {duration_text(t.client)};",
        f"    keepalive_timeout {duration_text(t.keepalive)};",
        f"    proxy_connect_timeout {duration_text(t.connect)};",
        f"    proxy_send_timeout {duration_text(t.server)};",
        f"    proxy_read_timeout {duration_text(t.server)};",
        "",
        "    # A node that refuses the connection got nothing of the request: the next node",
        "    # takes it (a PATCH too), and continues the upload from the shared state. nginx",
        "    # never retries a PATCH or POST once it has sent any of it.",
        "    proxy_next_upstream error timeout http_503;",
        "    proxy_next_upstream_tries 3;",
        "",
        "    # tether serve --trust-forwarded believes these headers: they are set here and",
        "    # never passed on from the client (a forged Forwarded header would win).",
        "    map $http_host $tether_host {",
        '        ""      $host;',
        "        default $http_host;",
        "    }",
        "    proxy_set_header Host $tether_host;",
        '    proxy_set_header Connection "";',
        "    proxy_set_header X-Forwarded-For $remote_addr;",
        "    proxy_set_header X-Forwarded-Proto $scheme;",
        "    proxy_set_header X-Forwarded-Host $tether_host;",
        '    proxy_set_header Forwarded "";',
        "    proxy_set_header Tether-No-Interim 1;",
        "",
        "    # New uploads, and anything that is not an upload URL: the least busy node.",
        "    upstream tether_new {",
        "        least_conn;",
        *_servers(cluster.serving, fail),
        "        keepalive 32;",
        "    }",
        "",
        "    # Upload URLs that name no listed node: a consistent hash of the URL.",
        "    upstream tether_by_url {",
        "        hash $uri consistent;",
        *_servers(cluster.serving, fail),
        "        keepalive 32;",
        "    }",
    ]
    for node in cluster.nodes:
        others = [n for n in cluster.serving if n.id != node.id]
        drain = (
            ["    # Weight 0: it takes no new uploads, and keeps its own."]
            if not node.weight
            else []
        )
        lines += [
            "",
            f"    # Uploads created by {node.id}; the others take them while it is down.",
            *drain,
            f"    upstream tether_node_{node.id} {{",
            f"        server {node.address} {fail};",
            *_servers(others, fail, backup=True),
            "        keepalive 32;",
            "    }",
        ]
    lines += ["", "    server {"]
    lines += [f"        listen {endpoint};" for endpoint in cluster.listen]
    lines += [
        f"        location = {base} {{",
        "            proxy_pass http://tether_new;",
        "        }",
        f"        location = {base[:-1]} {{",
        "            proxy_pass http://tether_new;",
        "        }",
        "        # A node id never contains a dot: each prefix below names one node only.",
    ]
    for node in cluster.nodes:
        lines += [
            f"        location ^~ {base}{node.id}. {{",
            f"            proxy_pass http://tether_node_{node.id};",
            "        }",
        ]
    lines += [
        f"        location {base} {{",
        "            proxy_pass http://tether_by_url;",
        "        }",
        "        location / {",
        "            proxy_pass http://tether_new;",
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _servers(nodes: tuple[Node, ...] | list[Node], fail: str, *, backup: bool = False) -> list[str]:
    role = " backup" if backup else ""
    return [f"        server {n.address} weight={n.weight} {fail}{role};" for n in nodes]
