"""The cluster file: what it accepts, its defaults, and errors that name the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.lb.cluster import (
    Cluster,
    ClusterError,
    Endpoint,
    Health,
    Node,
    Timeouts,
    duration_text,
    load,
    parse,
)

NODE = '[[nodes]]\nid = "n1"\naddress = "10.0.0.1:1080"\n'

FULL = """
listen = ["0.0.0.0:8080", "[::]:8080"]
base_path = "/api/uploads"

[timeouts]
connect = "500ms"
client = 120
server = "10m"
headers = "1.5s"
keepalive = "1h"

[health]
interval = "3s"
rise = 3
fall = 1

[[nodes]]
id = "n1"
address = "10.0.0.1:1080"
weight = 3

[[nodes]]
id = "web-02"
address = "[fd00::2]:1080"

[[nodes]]
id = "old_3"
address = "node3.internal:1080"
weight = 0
"""


def test_full_file() -> None:
    assert parse(FULL) == Cluster(
        listen=(Endpoint("0.0.0.0", 8080), Endpoint("::", 8080)),
        base_path="/api/uploads/",
        nodes=(
            Node("n1", Endpoint("10.0.0.1", 1080), 3),
            Node("web-02", Endpoint("fd00::2", 1080), 1),
            Node("old_3", Endpoint("node3.internal", 1080), 0),
        ),
        timeouts=Timeouts(connect=0.5, client=120, server=600, headers=1.5, keepalive=3600),
        health=Health(interval=3, rise=3, fall=1),
    )


def test_defaults() -> None:
    cluster = parse(NODE)
    assert cluster.listen == (Endpoint("0.0.0.0", 80),)
    assert cluster.base_path == "/files/"
    assert cluster.timeouts == Timeouts()
    assert cluster.health == Health()
    assert cluster.nodes == (Node("n1", Endpoint("10.0.0.1", 1080), 1),)


def test_serving_nodes_leave_out_weight_zero() -> None:
    assert [n.id for n in parse(FULL).serving] == ["n1", "web-02"]


def test_endpoints_print_as_configurations_want_them() -> None:
    assert [str(e) for e in parse(FULL).listen] == ["0.0.0.0:8080", "[::]:8080"]


@pytest.mark.parametrize(
    ("given", "path"),
    [("files", "/files/"), ("/files", "/files/"), ("/a/b.c/~d-e_f/", "/a/b.c/~d-e_f/")],
)
def test_base_paths_are_normalised(given: str, path: str) -> None:
    assert parse(f'base_path = "{given}"\n{NODE}').base_path == path


@pytest.mark.parametrize(
    ("text", "where", "why"),
    [
        ("nodes = [", "c.toml", "not valid TOML"),
        (f'listn = "x"\n{NODE}', "listn", "unknown key"),
        ("", "nodes", "at least one node"),
        ("nodes = []", "nodes", "at least one node"),
        ("nodes = [1]", "nodes[0]", "must be a table"),
        ('[[nodes]]\nid = "n.1"\naddress = "h:1"', "nodes[0].id", "not a node id"),
        ('[[nodes]]\nid = ""\naddress = "h:1"', "nodes[0].id", "not a node id"),
        ('[[nodes]]\naddress = "h:1"', "nodes[0].id", "None is not a node id"),
        ('[[nodes]]\nid = "n1"', "nodes[0].address", "missing"),
        ('[[nodes]]\nid = "n1"\naddress = "h:1"\nport = 2', "nodes[0].port", "unknown key"),
        (f'{NODE}[[nodes]]\nid = "n1"\naddress = "h:1"', "nodes[1].id", "used twice"),
        (
            f'{NODE}[[nodes]]\nid = "n2"\naddress = "10.0.0.1:1080"',
            "nodes[1].address",
            "is also n1",
        ),
        ('[[nodes]]\nid = "n1"\naddress = "host"', "nodes[0].address", "host:port"),
        ('[[nodes]]\nid = "n1"\naddress = "host:0"', "nodes[0].address", "port 1-65535"),
        ('[[nodes]]\nid = "n1"\naddress = "host:65536"', "nodes[0].address", "port 1-65535"),
        ('[[nodes]]\nid = "n1"\naddress = "::1:80"', "nodes[0].address", "in brackets"),
        ('[[nodes]]\nid = "n1"\naddress = "[::g]:80"', "nodes[0].address", "not an IPv6"),
        ('[[nodes]]\nid = "n1"\naddress = "a_b:80"', "nodes[0].address", "not a host name"),
        ('[[nodes]]\nid = "n1"\naddress = "a b:80"', "nodes[0].address", "not a host name"),
        ('[[nodes]]\nid = "n1"\naddress = 80', "nodes[0].address", "expected"),
        (f"{NODE}weight = -1", "nodes[0].weight", "integer 0-256"),
        (f"{NODE}weight = 257", "nodes[0].weight", "integer 0-256"),
        (f'{NODE}weight = "2"', "nodes[0].weight", "integer 0-256"),
        (f"{NODE}weight = 1.5", "nodes[0].weight", "integer 0-256"),
        (f"{NODE}weight = true", "nodes[0].weight", "integer 0-256"),
        (f"{NODE}weight = 0", "nodes", "every weight is 0"),
        (f"listen = []\n{NODE}", "listen", "at least one"),
        (f'listen = ["h:1", "h:1"]\n{NODE}', "listen", "twice"),
        (f'listen = "80"\n{NODE}', "listen", "host:port"),
        (f'base_path = "/"\n{NODE}', "base_path", "own prefix"),
        (f'base_path = "/a b/"\n{NODE}', "base_path", "plain path"),
        (f'base_path = "/a/../b/"\n{NODE}', "base_path", "plain path"),
        (f'base_path = "/a%2f/"\n{NODE}', "base_path", "plain path"),
        (f"base_path = 5\n{NODE}", "base_path", "must be a string"),
        (f'timeouts = "5s"\n{NODE}', "timeouts", "must be a table"),
        (f'{NODE}[timeouts]\nidle = "5s"', "timeouts.idle", "unknown key"),
        (f'{NODE}[timeouts]\nclient = "5 parsecs"', "timeouts.client", "duration like"),
        (f"{NODE}[timeouts]\nclient = 0", "timeouts.client", "between 1ms and 7 days"),
        (f"{NODE}[timeouts]\nclient = -3", "timeouts.client", "between 1ms and 7 days"),
        (f'{NODE}[timeouts]\nclient = "8d"', "timeouts.client", "duration like"),
        (f"{NODE}[timeouts]\nclient = 700000", "timeouts.client", "between 1ms and 7 days"),
        (f"{NODE}[timeouts]\nclient = true", "timeouts.client", "expected seconds"),
        (f"{NODE}[health]\nrise = 0", "health.rise", "integer 1-100"),
        (f'{NODE}[health]\nfall = "2"', "health.fall", "integer 1-100"),
        (f"{NODE}[health]\npath = '/x'", "health.path", "unknown key"),
    ],
)
def test_errors_name_the_key(text: str, where: str, why: str) -> None:
    with pytest.raises(ClusterError) as caught:
        parse(text, "c.toml")
    message = str(caught.value)
    assert message.startswith("c.toml: "), message
    assert where in message and why in message, message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("90", 90.0), ("1.5s", 1.5), ("5m", 300.0), ("1h", 3600.0), (" 2s ", 2.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse(f'{NODE}[timeouts]\nclient = "{text}"').timeouts.client == seconds


@pytest.mark.parametrize(
    ("seconds", "text"), [(90.0, "90s"), (0.25, "250ms"), (0.001, "1ms"), (1.0005, "1001ms")]
)
def test_duration_text(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


def test_load_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(FULL)
    assert load(path) == parse(FULL)


def test_load_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ClusterError, match=r"missing\.toml: cannot read"):
        load(tmp_path / "missing.toml")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ClusterError, match=r"binary\.toml: not UTF-8"):
        load(binary)
