"""The cluster file: the nodes behind the load balancers, and how to reach and check them.

A TOML file, read by ``tether lb haproxy|nginx --cluster FILE``::

    listen = "0.0.0.0:80"          # or a list: ["0.0.0.0:80", "[::]:80"]
    base_path = "/files/"          # every node's --base-path

    [timeouts]                     # all optional; numbers are seconds, or "500ms", "90s", "5m"
    connect = "5s"                 # to reach a node
    client = "90s"                 # longest silence from a client (keep above --body-timeout)
    server = "300s"                # longest silence from a node (completion may copy GBs)
    headers = "30s"                # to receive a request's headers
    keepalive = "60s"              # idle client connection between requests

    [health]                       # active checks of GET /ready (HAProxy)
    interval = "2s"
    rise = 2
    fall = 2

    [[nodes]]
    id = "n1"                      # the node's --node-id: upload URLs carry it
    address = "10.0.0.11:1080"     # host:port, [IPv6]:port
    weight = 1                     # 0-256, share of new uploads; 0 = drain (keeps its own)

Everything is checked here, with the file, key and a reason in the error, so that a
generator never writes a configuration the load balancer would refuse or misread.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.protocol.ids import NODE_ID, NODE_ID_RULE

MAX_WEIGHT = 256  # HAProxy's largest weight; nginx takes any positive integer
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_BASE_PATH = re.compile(r"/(?:[A-Za-z0-9._~-]+/)*")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class ClusterError(ValueError):
    """A cluster file that cannot be used; the message names the file, the key and why."""


@dataclass(frozen=True)
class Endpoint:
    host: str  # a host name, an IPv4 address, or an IPv6 address without brackets
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Node:
    id: str
    address: Endpoint
    weight: int = 1


@dataclass(frozen=True)
class Timeouts:
    """Seconds. Each is an idle time, never a bound on a whole request: an upload of any
    size passes while its bytes flow."""

    connect: float = 5.0
    client: float = 90.0
    server: float = 300.0
    headers: float = 30.0
    keepalive: float = 60.0


@dataclass(frozen=True)
class Health:
    interval: float = 2.0
    rise: int = 2
    fall: int = 2
    path: str = "/ready"


@dataclass(frozen=True)
class Cluster:
    listen: tuple[Endpoint, ...]
    base_path: str
    nodes: tuple[Node, ...]
    timeouts: Timeouts = Timeouts()
    health: Health = Health()

    @property
    def serving(self) -> tuple[Node, ...]:
        """Nodes that take new uploads (weight above 0)."""
        return tuple(node for node in self.nodes if node.weight > 0)


_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_PATH = re.compile(r"/[A-Za-z0-9._+/-]*")


def check_user(name: str) -> str:
    """``name`` if it is a plain system user name; ``ValueError`` otherwise."""
    if not _USER.fullmatch(name):
        raise ValueError(f"{name!r} is not a user name (lowercase letters, digits, '-', '_')")
    return name


def check_path(path: str) -> str:
    """``path`` if it is an absolute path a configuration can hold without quoting."""
    if not _PATH.fullmatch(path) or "/../" in path + "/":
        raise ValueError(f"{path!r}: use an absolute path of letters, digits and '._+-/' (no '..')")
    return path


def duration_text(seconds: float) -> str:
    """``90.0`` → ``"90s"``, ``0.25`` → ``"250ms"``: a form HAProxy and nginx both read."""
    millis = math.ceil(seconds * 1000 - 1e-6)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def load(path: str | Path) -> Cluster:
    """Read and check a cluster file; ``ClusterError`` says what is wrong and where."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ClusterError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ClusterError(f"{path}: not UTF-8 text") from None
    return parse(text, str(path))


def parse(text: str, name: str = "cluster file") -> Cluster:
    """A cluster from TOML text; ``name`` prefixes every error message."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ClusterError(f"{name}: not valid TOML: {exc}") from None
    return _Reader(name).cluster(data)


class _Reader:
    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, where: str, why: str) -> ClusterError:
        return ClusterError(f"{self.name}: {where}: {why}")

    def table(self, data: Mapping[str, Any], key: str, known: set[str]) -> Mapping[str, Any]:
        value = data.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table ([{key}])")
        self.known(value, known, key)
        return value

    def known(self, data: Mapping[str, Any], known: set[str], where: str | None) -> None:
        for key in data:
            if key not in known:
                place = f"{where}.{key}" if where else key
                raise self.fail(place, f"unknown key (known: {', '.join(sorted(known))})")

    def cluster(self, data: Mapping[str, Any]) -> Cluster:
        self.known(data, {"listen", "base_path", "timeouts", "health", "nodes"}, None)
        listen = data.get("listen", "0.0.0.0:80")
        items = listen if isinstance(listen, list) else [listen]
        if not items:
            raise self.fail("listen", "needs at least one host:port")
        endpoints = tuple(self.endpoint(item, "listen") for item in items)
        if len(set(endpoints)) != len(endpoints):
            raise self.fail("listen", "lists an address twice")
        return Cluster(
            listen=endpoints,
            base_path=self.base_path(data.get("base_path", "/files/")),
            nodes=self.nodes(data.get("nodes")),
            timeouts=self.timeouts(self.table(data, "timeouts", set(vars(Timeouts())))),
            health=self.health(self.table(data, "health", {"interval", "rise", "fall"})),
        )

    def base_path(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail("base_path", 'must be a string such as "/files/"')
        path = "/" + value.strip("/") + "/" if value.strip("/") else "/"
        if not _BASE_PATH.fullmatch(path) or "/./" in path or "/../" in path:
            raise self.fail(
                "base_path", f"{value!r} must be a plain path: letters, digits, '-._~' and '/'"
            )
        if path == "/":
            raise self.fail("base_path", "must not be '/': uploads need their own prefix")
        return path

    def endpoint(self, value: Any, where: str) -> Endpoint:
        if not isinstance(value, str):
            raise self.fail(where, f'expected "host:port", got {value!r}')
        host, sep, port_text = value.rpartition(":")
        if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise self.fail(where, f"expected host:port with a port 1-65535, got {value!r}")
        if host.startswith("[") and host.endswith("]"):
            try:
                host = str(ipaddress.IPv6Address(host[1:-1]))
            except ValueError:
                raise self.fail(where, f"{host} is not an IPv6 address") from None
        elif ":" in host:
            raise self.fail(where, f"write IPv6 addresses in brackets: [{host}]:{port_text}")
        elif not _HOST_NAME.fullmatch(host):
            raise self.fail(where, f"{host!r} is not a host name or an IPv4 address")
        return Endpoint(host, int(port_text))

    def nodes(self, value: Any) -> tuple[Node, ...]:
        example = '[[nodes]] id = "n1", address = "10.0.0.11:1080"'
        if not isinstance(value, list) or not value:
            raise self.fail("nodes", f"at least one node is needed: {example}")
        found: dict[str, Node] = {}
        addresses: dict[Endpoint, str] = {}
        for i, item in enumerate(value):
            where = f"nodes[{i}]"
            if not isinstance(item, dict):
                raise self.fail(where, f"must be a table: {example}")
            self.known(item, {"id", "address", "weight"}, where)
            node_id = item.get("id")
            if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
                raise self.fail(
                    f"{where}.id", f"{node_id!r} is not a node id ({NODE_ID_RULE}, as --node-id)"
                )
            if node_id in found:
                raise self.fail(f"{where}.id", f"{node_id!r} is used twice")
            if "address" not in item:
                raise self.fail(f"{where}.address", "missing: host:port of its tether serve")
            address = self.endpoint(item["address"], f"{where}.address")
            if address in addresses:
                raise self.fail(f"{where}.address", f"{address} is also {addresses[address]}")
            weight = item.get("weight", 1)
            if type(weight) is not int or not 0 <= weight <= MAX_WEIGHT:
                raise self.fail(
                    f"{where}.weight", f"must be an integer 0-{MAX_WEIGHT}, got {weight!r}"
                )
            found[node_id] = Node(node_id, address, weight)
            addresses[address] = node_id
        if not any(node.weight for node in found.values()):
            raise self.fail("nodes", "every weight is 0: no node would take new uploads")
        return tuple(found.values())

    def duration(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.fail(where, f'expected seconds or a duration like "90s", got {value!r}')
        if isinstance(value, str):
            match = _DURATION.fullmatch(value.strip())
            if match is None:
                raise self.fail(where, f"expected a duration like 500ms, 90s, 5m, 1h: {value!r}")
            seconds = float(match[1]) * _UNITS[match[2]]
        else:
            seconds = float(value)
        if not math.isfinite(seconds) or not 0.001 <= seconds <= 7 * 86400:
            raise self.fail(where, f"must lie between 1ms and 7 days, got {value!r}")
        return seconds

    def timeouts(self, data: Mapping[str, Any]) -> Timeouts:
        defaults = Timeouts()
        values = {
            key: self.duration(data[key], f"timeouts.{key}") if key in data else default
            for key, default in vars(defaults).items()
        }
        return Timeouts(**values)

    def health(self, data: Mapping[str, Any]) -> Health:
        defaults = Health()
        interval = (
            self.duration(data["interval"], "health.interval")
            if "interval" in data
            else defaults.interval
        )
        rise, fall = (self.count(data, key, getattr(defaults, key)) for key in ("rise", "fall"))
        return Health(interval=interval, rise=rise, fall=fall)

    def count(self, data: Mapping[str, Any], key: str, default: int) -> int:
        count = data.get(key, default)
        if type(count) is not int or not 1 <= count <= 100:
            raise self.fail(f"health.{key}", f"must be an integer 1-100, got {count!r}")
        return count
