"""The generated configurations pass ``haproxy -c`` and ``nginx -t`` (Debian's HAProxy 2.6
and nginx 1.22 here) without a warning, for clusters of every shape the file allows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.lb.balancers import KINDS, binary, check, generate, unprivileged_args, version

SHAPES = {
    "one-node": '[[nodes]]\nid = "solo"\naddress = "127.0.0.1:1080"\n',
    "three-nodes": """
listen = ["127.0.0.1:18080", "[::1]:18080"]
[timeouts]
connect = "250ms"
client = "2m"
server = "1h"
headers = "10s"
keepalive = "1500ms"
[health]
interval = "500ms"
rise = 1
fall = 10
[[nodes]]
id = "n1"
address = "127.0.0.1:1081"
weight = 256
[[nodes]]
id = "Web_02-b"
address = "[::1]:1082"
[[nodes]]
id = "n3"
address = "localhost:1083"
weight = 0
""",
    "deep-base-path": 'base_path = "/api/v1.2/up~loads"\n'
    '[[nodes]]\nid = "a"\naddress = "127.0.0.1:1"\n'
    '[[nodes]]\nid = "b"\naddress = "127.0.0.1:2"\n',
    "twenty-nodes": "".join(
        f'[[nodes]]\nid = "node-{i:02}"\naddress = "127.0.{i}.1:{1080 + i}"\nweight = {i % 4}\n'
        for i in range(1, 21)
    ),
}


def readme_example() -> str:
    """The cluster file the README shows under "tether lb"."""
    text = (Path(__file__).parents[2] / "README.md").read_text()
    section = text[text.index("### tether lb") :]
    start = section.index("```toml\n") + len("```toml\n")
    return section[start : section.index("```", start)]


SHAPES["readme"] = readme_example()


@pytest.fixture(scope="module", autouse=True)
def show_versions() -> None:
    for kind in KINDS:
        if binary(kind):
            print(f"\n{kind} {version(kind)}", end="")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_generated_configuration_is_valid(kind: str, shape: str, tmp_path: Path) -> None:
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(SHAPES[shape])
    config = tmp_path / f"{kind}.conf"
    runtime = tmp_path / "run"
    config.write_text(generate(kind, cluster, *unprivileged_args(kind, runtime)))
    check(kind, config, runtime)


@pytest.mark.parametrize("kind", KINDS)
def test_as_installed(kind: str, tmp_path: Path) -> None:
    """With the defaults an operator installs: dropping to Debian's service users, and
    for nginx Debian's pid and log paths (which need root to open)."""
    if os.geteuid() != 0:
        pytest.skip("the installed defaults (user, /var/log/nginx) need root to check")
    binary(kind)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(SHAPES["three-nodes"])
    config = tmp_path / f"{kind}.conf"
    config.write_text(generate(kind, cluster))
    if kind == "nginx" and not Path("/var/log/nginx").is_dir():
        pytest.skip("no /var/log/nginx: nginx is not installed the Debian way")
    check(kind, config, tmp_path / "run")


def test_a_broken_configuration_is_caught(tmp_path: Path) -> None:
    """The check itself fails on an error, so a pass above means something."""
    for kind in KINDS:
        binary(kind)
        config = tmp_path / f"{kind}.conf"
        config.write_text("frontend {\n" if kind == "nginx" else "frontend x\n    bind nowhere\n")
        with pytest.raises(AssertionError):
            check(kind, config, tmp_path / "run")
