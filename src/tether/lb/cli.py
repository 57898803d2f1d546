"""``tether lb haproxy|nginx --cluster FILE``: print a load balancer configuration."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def add_parser(commands: Any) -> None:
    """Add ``tether lb`` and its two subcommands to the ``tether`` subparsers."""
    lb = commands.add_parser(
        "lb",
        help="print a load balancer configuration (HAProxy, nginx) for a cluster",
        description="Print a complete, commented load balancer configuration that routes "
        "each upload to the node that created it (the node id travels in the upload URL), "
        "new uploads to the least busy node, and streams bodies. The cluster file (TOML) "
        "lists the nodes: see README, 'tether lb'.",
    )
    kinds = lb.add_subparsers(dest="lb_command", required=True, metavar="{haproxy,nginx}")
    haproxy = kinds.add_parser(
        "haproxy",
        help="haproxy.cfg (HAProxy 2.4+, checked with 2.6)",
        description="Print a whole haproxy.cfg for the cluster to standard output.",
    )
    _cluster_argument(haproxy)
    haproxy.add_argument(
        "--user",
        default="haproxy",
        help="user and group HAProxy drops to after binding (default haproxy; '' to stay"
        " as started, e.g. without root)",
    )
    haproxy.set_defaults(run=_run_haproxy)
    nginx = kinds.add_parser(
        "nginx",
        help="nginx.conf (checked with nginx 1.22)",
        description="Print a whole nginx.conf for the cluster to standard output.",
    )
    _cluster_argument(nginx)
    nginx.add_argument(
        "--user",
        default="www-data",
        help="user of nginx's workers (default www-data; '' to leave the directive out)",
    )
    nginx.add_argument(
        "--runtime-dir",
        metavar="DIR",
        help="keep the pid file, logs and temporary files in DIR (default: Debian's"
        " /run/nginx.pid, /var/log/nginx, /var/lib/nginx)",
    )
    nginx.set_defaults(run=_run_nginx)


def _cluster_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cluster", required=True, metavar="FILE", help="cluster file (TOML): nodes and options"
    )


def _run_haproxy(args: argparse.Namespace) -> int:
    from tether.lb import haproxy
    from tether.lb.cluster import load

    try:
        text = haproxy.render(load(args.cluster), source=args.cluster, user=args.user or None)
    except ValueError as exc:  # ClusterError too
        print(f"tether lb: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


def _run_nginx(args: argparse.Namespace) -> int:
    from tether.lb import nginx
    from tether.lb.cluster import load

    runtime_dir = args.runtime_dir and os.path.abspath(args.runtime_dir)
    try:
        text = nginx.render(
            load(args.cluster), source=args.cluster, user=args.user or None, runtime_dir=runtime_dir
        )
    except ValueError as exc:  # ClusterError too
        print(f"tether lb: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0
