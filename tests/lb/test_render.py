"""What the generated configurations say, line by line: routing by the node in the URL, a
hash fallback, least connections for creation, health checks, streaming, timeouts and
forwarded headers. (That HAProxy and nginx accept them, and act on them, is checked in
test_validate.py and tests/e2e/test_lb.py.)"""

from __future__ import annotations

import re

import pytest

from tether.lb import haproxy, nginx
from tether.lb.cluster import Cluster, parse

THREE = """
listen = ["0.0.0.0:8080", "[::]:8080"]
[timeouts]
client = "100s"
server = "7m"
[health]
interval = "3s"
rise = 4
fall = 5
[[nodes]]
id = "n1"
address = "10.0.0.1:1080"
weight = 2
[[nodes]]
id = "n2"
address = "[fd00::2]:1080"
[[nodes]]
id = "n3"
address = "node3.internal:1080"
weight = 0
"""


@pytest.fixture
def cluster() -> Cluster:
    return parse(THREE)


def section(text: str, header: str) -> list[str]:
    """The lines of one HAProxy section (up to the next blank line), comments left out."""
    lines = text.split("\n")
    start = lines.index(header)
    body = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        if not line.strip().startswith("#"):
            body.append(line.strip())
    return body


def block(text: str, opening: str) -> list[str]:
    """The directives of one nginx block, without those of blocks inside it or comments."""
    lines = [line.strip() for line in text.split("\n")]
    start = lines.index(opening)
    body, depth = [], 0
    for line in lines[start + 1 :]:
        if line == "}":
            if depth == 0:
                break
            depth -= 1
        elif line.endswith("{"):
            depth += 1
        elif line and not line.startswith("#") and depth == 0:
            body.append(line)
    return body


# -- HAProxy -------------------------------------------------------------------------------


def test_haproxy_routes_existing_uploads_to_their_node(cluster: Cluster) -> None:
    uploads = section(haproxy.render(cluster), "backend tether_uploads")
    assert uploads[:2] == ["balance uri path-only", "hash-type consistent"]
    assert [line for line in uploads if line.startswith("use-server")] == [
        "use-server n1 if { path_beg /files/n1. }",
        "use-server n2 if { path_beg /files/n2. }",
        "use-server n3 if { path_beg /files/n3. }",
    ]
    assert [line.split("#")[0].strip() for line in uploads if line.startswith("server")] == [
        "server n1 10.0.0.1:1080 weight 2",
        "server n2 [fd00::2]:1080 weight 1",
        "server n3 node3.internal:1080 weight 0",
    ]
    assert "option httpchk GET /ready" in uploads
    assert "http-check expect status 200" in uploads
    assert "default-server check inter 3s rise 4 fall 5" in uploads


def test_haproxy_creates_on_the_least_busy_node(cluster: Cluster) -> None:
    text = haproxy.render(cluster)
    frontend = section(text, "frontend tether")
    assert frontend[:2] == ["bind 0.0.0.0:8080", "bind [::]:8080"]
    assert "acl tether_create path /files/ /files" in frontend
    assert "acl tether_upload path_beg /files/" in frontend
    assert "use_backend tether_uploads if tether_upload !tether_create" in frontend
    assert frontend[-1] == "default_backend tether_new"
    assert section(text, "backend tether_new") == [
        "balance leastconn",
        "server n1 10.0.0.1:1080 weight 2 track tether_uploads/n1",
        "server n2 [fd00::2]:1080 weight 1 track tether_uploads/n2",
        "server n3 node3.internal:1080 weight 0 track tether_uploads/n3",
    ]


def test_haproxy_sets_forwarded_headers_itself(cluster: Cluster) -> None:
    frontend = section(haproxy.render(cluster), "frontend tether")
    assert frontend.index("http-request del-header Forwarded") < frontend.index(
        "use_backend tether_uploads if tether_upload !tether_create"
    )
    for line in [
        "http-request set-header X-Forwarded-For %[src]",
        "http-request set-header X-Forwarded-Proto https if { ssl_fc }",
        "http-request set-header X-Forwarded-Proto http unless { ssl_fc }",
        "http-request set-header X-Forwarded-Host %[req.hdr(host)] if tether_has_host",
        "http-request del-header X-Forwarded-Host unless tether_has_host",
    ]:
        assert line in frontend
    assert "option forwardfor" not in haproxy.render(cluster)  # it would append, not replace


def test_haproxy_streams_and_times_out_only_idle_requests(cluster: Cluster) -> None:
    text = haproxy.render(cluster)
    defaults = section(text, "defaults")
    assert "timeout client 100s" in defaults
    assert "timeout server 420s" in defaults
    assert "timeout connect 5s" in defaults
    assert defaults[-3:] == ["retries 3", "retry-on conn-failure", "option redispatch 1"]
    assert not re.search(r"^\s*option http-buffer-request", text, re.M)
    assert "timeout tunnel" not in text and "timeout request" not in text


def test_haproxy_user(cluster: Cluster) -> None:
    assert section(haproxy.render(cluster), "global")[-2:] == ["user haproxy", "group haproxy"]
    assert "user" not in " ".join(section(haproxy.render(cluster, user=None), "global"))
    with pytest.raises(ValueError, match="not a user name"):
        haproxy.render(cluster, user="root\n    daemon")


def test_haproxy_base_path() -> None:
    text = haproxy.render(parse('base_path = "/api/up"\n[[nodes]]\nid = "a"\naddress = "h:1"'))
    assert "acl tether_create path /api/up/ /api/up" in text
    assert "use-server a if { path_beg /api/up/a. }" in text


# -- nginx ---------------------------------------------------------------------------------


def test_nginx_routes_existing_uploads_to_their_node(cluster: Cluster) -> None:
    text = nginx.render(cluster)
    fail = "max_fails=5 fail_timeout=12s"
    assert block(text, "upstream tether_node_n1 {") == [
        f"server 10.0.0.1:1080 {fail};",
        f"server [fd00::2]:1080 weight=1 {fail} backup;",
        "keepalive 32;",
    ]
    # n3 takes no new uploads, so never another node's as a backup; it keeps its own.
    assert block(text, "upstream tether_node_n2 {") == [
        f"server [fd00::2]:1080 {fail};",
        f"server 10.0.0.1:1080 weight=2 {fail} backup;",
        "keepalive 32;",
    ]
    assert block(text, "upstream tether_node_n3 {")[0] == f"server node3.internal:1080 {fail};"
    for node in ("n1", "n2", "n3"):
        assert block(text, f"location ^~ /files/{node}. {{") == [
            f"proxy_pass http://tether_node_{node};"
        ]
    assert block(text, "upstream tether_by_url {") == [
        "hash $uri consistent;",
        f"server 10.0.0.1:1080 weight=2 {fail};",
        f"server [fd00::2]:1080 weight=1 {fail};",
        "keepalive 32;",
    ]
    assert block(text, "location /files/ {") == ["proxy_pass http://tether_by_url;"]


def test_nginx_creates_on_the_least_busy_node(cluster: Cluster) -> None:
    text = nginx.render(cluster)
    assert block(text, "upstream tether_new {")[:1] == ["least_conn;"]
    for opening in ("location = /files/ {", "location = /files {", "location / {"):
        assert block(text, opening) == ["proxy_pass http://tether_new;"]
    server = block(text, "server {")
    assert server[:2] == ["listen 0.0.0.0:8080;", "listen [::]:8080;"]


def test_nginx_streams_bodies_and_sets_headers(cluster: Cluster) -> None:
    http = block(nginx.render(cluster), "http {")
    for line in [
        "client_max_body_size 0;",
        "proxy_request_buffering off;",
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $tether_host;",
        'proxy_set_header Forwarded "";',
        "proxy_set_header Tether-No-Interim 1;",
        "client_body_timeout 100s;",
        "proxy_read_timeout 420s;",
        "proxy_send_timeout 420s;",
        "proxy_next_upstream error timeout http_503;",
    ]:
        assert line in http, line
    assert "$proxy_add_x_forwarded_for" not in nginx.render(cluster)


def test_nginx_paths_and_user(cluster: Cluster) -> None:
    text = nginx.render(cluster)
    assert "user www-data;" in text and "pid /run/nginx.pid;" in text
    assert "access_log /var/log/nginx/access.log tether;" in text
    assert "_temp_path" not in text
    own = nginx.render(cluster, user=None, runtime_dir="/tmp/lb/")
    assert not any(line.startswith("user ") for line in own.split("\n"))
    assert "pid /tmp/lb/nginx.pid;" in own and "error_log /tmp/lb/error.log warn;" in own
    assert "client_body_temp_path /tmp/lb/client_body;" in own
    for bad in ("relative", "/a b", "/a;b", "/a/../b", "/x{"):
        with pytest.raises(ValueError, match="absolute path"):
            nginx.render(cluster, runtime_dir=bad)
    with pytest.raises(ValueError, match="not a user name"):
        nginx.render(cluster, user="www data")


@pytest.mark.parametrize("render", [haproxy.render, nginx.render])
def test_configurations_explain_themselves(render: object, cluster: Cluster) -> None:
    assert callable(render)
    text = render(cluster, source="prod.toml")
    comments = [line for line in text.split("\n") if line.lstrip().startswith("#")]
    assert len(comments) >= 20
    assert "--cluster prod.toml" in text
    assert "never a condition of correctness" in text
    assert "--trust-forwarded" in text
    assert all(len(line) <= 100 for line in text.split("\n"))
