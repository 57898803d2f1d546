"""``tether dns`` and ``tether dns check``.

Only argparse is imported at the top: ``tether serve`` must not pay for dnspython.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r} (0-65535)")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r}")
    return value


def add_parser(commands: Any) -> None:
    """Add ``dns`` (and its ``check`` action) to the ``tether`` subcommands."""
    dns = commands.add_parser(
        "dns",
        help="run the GSLB DNS server (client subnets hashed to POPs)",
        description="Serve the names of a zone, answering each client subnet with the POPs "
        "that weighted rendezvous hashing ranks first among the healthy ones.",
    )
    dns.add_argument("--config", metavar="FILE", help="the TOML configuration (required)")
    dns.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    dns.add_argument(
        "--port", type=_port, default=5353, help="UDP and TCP port (default 5353; DNS is 53)"
    )
    dns.add_argument(
        "--metrics-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve counters as Prometheus text on http://HOST:PORT/metrics (default: off)",
    )
    dns.add_argument(
        "--cache-entries",
        type=_count,
        default=None,
        metavar="N",
        help="packet cache size (default 65536; 0 turns it off)",
    )
    dns.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="debug logs every query (default info)",
    )
    dns.add_argument("--log-format", default="json", choices=("json", "text"))
    dns.set_defaults(run=_run_server)

    actions = dns.add_subparsers(dest="dns_action", metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="print the POP ranking for a client subnet",
        description="Print how each service ranks its POPs for a client subnet, and what "
        "tether dns would answer (all POPs up, unless --down says otherwise).",
    )
    check.add_argument("--config", metavar="FILE", required=True, help="the TOML configuration")
    check.add_argument(
        "subnet",
        metavar="SUBNET",
        help="a client address (masked as configured) or subnet as ECS sends it, "
        "e.g. 203.0.113.7, 203.0.113.0/24, 2001:db8:1::/48",
    )
    check.add_argument(
        "--down",
        action="append",
        default=[],
        metavar="POP",
        help="treat this POP as down (repeat, or separate ids with commas)",
    )
    check.set_defaults(run=_run_check)


def _run_server(args: argparse.Namespace) -> int:
    from tether.dns.config import ConfigError, load_config
    from tether.dns.server import ServerSettings, run
    from tether.observe import setup_logging

    if not args.config:
        print("tether dns: --config FILE is required", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"tether dns: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, args.log_format)
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        metrics_port=args.metrics_port,
        cache_entries=args.cache_entries,
    )
    try:
        run(config, settings)
    except OSError as exc:
        print(f"tether dns: cannot listen on {args.host} port {args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_check(args: argparse.Namespace) -> int:
    from tether.dns.check import render_check
    from tether.dns.config import ConfigError, load_config

    try:
        config = load_config(args.config)
        down = {pop for item in args.down for pop in item.split(",") if pop}
        print(render_check(config, args.subnet, down), end="")
    except (ConfigError, ValueError) as exc:
        print(f"tether dns check: {exc}", file=sys.stderr)
        return 2
    return 0
