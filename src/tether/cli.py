"""``tether`` command line."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tether import __version__

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_DURATIONS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """``1048576``, ``512MiB``, ``5g`` → bytes."""
    value = text.strip().lower()
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(number) :].strip()
    if unit not in _UNITS or not number:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 1048576, 512MiB, 5GiB)")
    try:
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None


def parse_duration(text: str) -> float | None:
    """``3600``, ``90m``, ``24h``, ``7d``; ``0`` or ``never`` turns expiry off."""
    value = text.strip().lower()
    if value in ("0", "never", "off", "none"):
        return None
    number = value.rstrip("smhd")
    unit = value[len(number) :]
    try:
        return float(number) * _DURATIONS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 3600, 90m, 24h)") from None


def _node_id(text: str) -> str:
    from tether.protocol.ids import check_node_id

    try:
        return check_node_id(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"TETHER_{name}", default)


def _flag_env(name: str) -> bool:
    return (_env(name) or "").lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__)
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the upload server (tus 1.0 + IETF resumable uploads)",
        description="Run the upload server. Every option can also be set with the "
        "TETHER_<OPTION> environment variable (e.g. TETHER_PORT=8080).",
    )
    # String defaults, as from the environment: argparse converts them with ``type``, so a
    # bad TETHER_PORT is a usage error (exit 2) like a bad --port, not a traceback.
    serve.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=_env("PORT") or "1080")
    serve.add_argument("--base-path", default=_env("BASE_PATH", "/files/"))
    serve.add_argument(
        "--state",
        default=_env("STATE", "sqlite:///./tether-data/state.db"),
        help="state store URL: sqlite:///PATH (one node), postgresql://… or redis://…"
        " (rediss:// for TLS; nodes sharing it form a cluster), memory:// (tests)",
    )
    serve.add_argument(
        "--storage",
        default=_env("STORAGE", "file://./tether-data/uploads"),
        help="byte store URL: file://DIR (for a cluster, a directory every node shares),"
        " s3://BUCKET/PREFIX?endpoint=…&region=…, memory:// (tests)",
    )
    serve.add_argument(
        "--node-id",
        type=_node_id,
        default=_env("NODE_ID"),
        help="this node's id in logs, metrics and upload URLs: 1-63 letters, digits, '-'"
        " or '_' (default: host name)",
    )
    serve.add_argument(
        "--node-in-url",
        choices=("auto", "on", "off"),
        default=_env("NODE_IN_URL", "auto"),
        help="put the node id in the upload URLs this node creates (/files/NODE.ID), for"
        " load balancers that route by it; auto (default): on with a shared state store"
        " (postgresql://, redis://). Never needed for correctness",
    )
    serve.add_argument(
        "--max-size",
        type=parse_size,
        default=_env("MAX_SIZE"),
        help="largest upload accepted, e.g. 10GiB (default: no limit)",
    )
    serve.add_argument(
        "--expire-after",
        type=parse_duration,
        default=_env("EXPIRE_AFTER", "24h"),
        help="remove incomplete uploads idle this long (default 24h; 0 = never)",
    )
    serve.add_argument(
        "--durability",
        choices=("process", "machine"),
        default=_env("DURABILITY", "process"),
        help="process: acknowledged bytes survive a crash of tether (default);"
        " machine: they also survive a power loss (fdatasync before each commit)",
    )
    serve.add_argument(
        "--trust-forwarded",
        action="store_true",
        default=_flag_env("TRUST_FORWARDED"),
        help="build Location and client addresses from Forwarded/X-Forwarded-*",
    )
    serve.add_argument(
        "--cors-origins",
        default=_env("CORS_ORIGINS", "*"),
        help="comma-separated allowed browser origins, or * (default)",
    )
    serve.add_argument(
        "--no-download",
        action="store_true",
        default=_flag_env("NO_DOWNLOAD"),
        help="do not serve completed uploads on GET",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=_env("BODY_TIMEOUT") or "60",
        help="seconds a request body may stall before it is committed and closed",
    )
    serve.add_argument(
        "--commit-interval",
        type=parse_size,
        default=_env("COMMIT_INTERVAL", "4MiB"),
        help="commit a streaming body at least every this many bytes (default 4MiB)",
    )
    serve.add_argument(
        "--commit-period",
        type=float,
        default=_env("COMMIT_PERIOD") or "0.25",
        help="but no sooner than this many seconds after its previous commit"
        " (default 0.25; 0: at every interval; S3 commits at every part)",
    )
    serve.add_argument(
        "--quiet-commit",
        type=float,
        default=_env("QUIET_COMMIT") or "1",
        help="a body that has sent nothing for this many seconds commits what it sent"
        " (default 1; 0: never; not on S3)",
    )
    serve.add_argument(
        "--log-level",
        default=_env("LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
    )
    serve.add_argument("--log-format", default=_env("LOG_FORMAT", "json"), choices=("json", "text"))
    serve.add_argument(
        "--no-access-log",
        action="store_true",
        default=_flag_env("NO_ACCESS_LOG"),
        help="do not log a line per request",
    )
    _add_command_modules(commands)
    return parser


# Commands that live next to what they run. Each module has ``add_parser(commands)``, which
# adds its subcommands with ``set_defaults(run=...)``; ``run(args)`` returns the exit status.
# Modules import only argparse at the top, so ``tether serve`` starts no faster or slower.
COMMAND_MODULES = ("tether.client.cli", "tether.dns.cli", "tether.lb.cli")


def _add_command_modules(commands: Any) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # not part of this build
            raise
        module.add_parser(commands)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


def _serve(args: argparse.Namespace) -> int:
    from tether.backends import BackendError
    from tether.observe import setup_logging
    from tether.server.config import ServerConfig
    from tether.server.run import serve
    from tether.state.base import StoreUnavailable
    from tether.storage.base import StorageError

    setup_logging(args.log_level, args.log_format)
    size = args.max_size
    if isinstance(size, str):
        size = parse_size(size)
    expire = args.expire_after
    if isinstance(expire, str):
        expire = parse_duration(expire)
    interval = args.commit_interval
    if isinstance(interval, str):
        interval = parse_size(interval)
    kwargs = {}
    if args.node_id:
        kwargs["node_id"] = args.node_id
    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            base_path=args.base_path,
            state_url=args.state,
            storage_url=args.storage,
            max_size=size,
            expire_after=expire,
            durability=args.durability,
            trust_forwarded=args.trust_forwarded,
            cors_origins=tuple(o.strip() for o in args.cors_origins.split(",") if o.strip()),
            allow_download=not args.no_download,
            body_idle_timeout=args.body_timeout,
            commit_interval=interval,
            commit_period=args.commit_period,
            quiet_commit=args.quiet_commit,
            access_log=not args.no_access_log,
            node_in_url=args.node_in_url,
            **kwargs,
        )
        return serve(config)
    except (ValueError, BackendError, StoreUnavailable, StorageError) as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
