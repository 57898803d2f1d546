"""``tether upload``, ``tether status``, ``tether cancel``.

Exit status: 0 when every file was uploaded (or the status/cancel succeeded), 1 when any
upload failed (the message names the file, the upload URL and the server's reason), 2 for
unusable arguments, 130 when interrupted (what the server acknowledged stays; run the same
command again to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.client.transport import ProgressReport

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def add_parser(commands: Any) -> None:
    from tether.cli import parse_size

    upload = commands.add_parser(
        "upload",
        help="upload files, resuming after any failure (tus 1.0 or the IETF draft)",
        description="Upload FILEs to a tus server. Interrupted? Run the same command again: "
        "it continues where the server's offset says.",
    )
    upload.add_argument("files", nargs="+", metavar="FILE")
    upload.add_argument("--url", required=True, help="the server's upload endpoint")
    upload.add_argument(
        "--chunk-size",
        default="8MiB",
        help="bytes per request, e.g. 8MiB, or 'auto' to adapt to the network (default 8MiB)",
    )
    upload.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="send N parts at once and join them (needs the concatenation extension)",
    )
    upload.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="upload metadata (repeatable); filename and sha256 are added",
    )
    upload.add_argument(
        "--checksum",
        default="auto",
        help="per-request checksum: auto (the cheapest the server offers), none, or an"
        " algorithm (crc32c, sha1, md5, sha256, sha512)",
    )
    upload.add_argument(
        "--digest",
        action="store_true",
        help="send the file's sha256 as metadata (sha256), for the server or you to check"
        " the result; costs reading the file once more (about 1 s per GiB)",
    )
    upload.add_argument(
        "--no-resume", action="store_true", help="do not remember or reuse upload URLs"
    )
    upload.add_argument(
        "--retries", type=int, default=10, help="attempts in a row without progress (default 10)"
    )
    upload.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up on a file after this many seconds in all (default: no limit)",
    )
    upload.add_argument(
        "--stall-timeout",
        type=float,
        default=60.0,
        help="seconds a request may make no progress before it is retried (default 60)",
    )
    upload.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable), e.g. 'Authorization: Bearer …'",
    )
    upload.add_argument("--protocol", choices=("tus", "ietf"), default="tus")
    upload.add_argument(
        "--json", action="store_true", help="one JSON object per file on stdout, no progress bar"
    )
    upload.set_defaults(run=run_upload, parse_size=parse_size)

    for name, helptext in (
        ("status", "show where an upload stands"),
        ("cancel", "terminate an upload (DELETE)"),
    ):
        command = commands.add_parser(name, help=helptext, description=helptext)
        command.add_argument("url", metavar="URL")
        command.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'")
        command.add_argument("--protocol", choices=("tus", "ietf"), default="tus")
        command.add_argument("--json", action="store_true")
        command.set_defaults(run=run_status if name == "status" else run_cancel)


def _headers(values: list[str]) -> dict[str, str]:
    headers = {}
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header wants 'NAME: VALUE', not {value!r}")
        headers[name.strip()] = rest.strip()
    return headers


def _metadata(values: list[str]) -> dict[str, str]:
    metadata = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key or " " in key or "," in key:
            raise ValueError(
                f"--metadata wants KEY=VALUE with a key of no spaces or commas: {value!r}"
            )
        metadata[key] = rest
    return metadata


def run_upload(args: argparse.Namespace) -> int:
    import json
    import time

    from tether.client import Client, Settings, UploadFailed
    from tether.client.errors import Cancelled

    try:
        headers = _headers(args.header)
        metadata = _metadata(args.metadata)
        adaptive = args.chunk_size.strip().lower() == "auto"
        chunk = 8 * 1024 * 1024 if adaptive else args.parse_size(args.chunk_size)
        if chunk <= 0 or args.parallel < 1 or args.retries < 0:
            raise ValueError("--chunk-size, --parallel and --retries must be positive")
        missing = [f for f in args.files if not os.path.isfile(f)]
        if missing:
            raise ValueError(f"not a file: {', '.join(missing)}")
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"tether upload: {exc}", file=sys.stderr)
        return EXIT_USAGE
    settings = Settings(
        chunk_size=chunk,
        adaptive=adaptive,
        retries=args.retries,
        total_timeout=args.timeout,
        checksum=args.checksum,
    )
    bar = None if args.json else _Bars()
    totals = {"files": 0, "bytes": 0, "retries": 0, "resumed": 0, "failed": 0}
    started = time.monotonic()
    status = 0
    with Client(
        args.url,
        protocol=args.protocol,
        headers=headers,
        timeout=args.stall_timeout,
        settings=settings,
        resume=not args.no_resume,
    ) as client:
        for path in args.files:
            began = time.monotonic()
            task = bar.add(path) if bar is not None else None
            report = bar.reporter(task) if bar is not None else None
            try:
                result = client.upload(
                    path,
                    metadata=metadata,
                    parallel=args.parallel,
                    digest=args.digest,
                    on_progress=report,
                )
            except KeyboardInterrupt:
                if bar is not None:
                    bar.stop()
                print("tether upload: interrupted; run it again to resume", file=sys.stderr)
                return EXIT_INTERRUPTED
            except (UploadFailed, Cancelled, OSError) as exc:
                totals["failed"] += 1
                status = EXIT_FAILED
                if bar is not None:
                    bar.fail(task, path)
                if args.json:
                    print(json.dumps({"file": path, "status": "failed", "error": str(exc)}))
                else:
                    bar_print(bar, f"[red]failed[/red] {path}: {exc}")
                continue
            seconds = time.monotonic() - began
            totals["files"] += 1
            totals["bytes"] += result.size
            totals["retries"] += result.retries
            totals["resumed"] += int(result.resumed)
            if args.json:
                print(
                    json.dumps(
                        {
                            "file": path,
                            "status": "done",
                            "url": result.url,
                            "size": result.size,
                            "sha256": result.sha256,
                            "resumed": result.resumed,
                            "retries": result.retries,
                            "parts": list(result.parts),
                            "sent": result.sent,
                            "seconds": round(seconds, 3),
                        }
                    ),
                    flush=True,
                )
            elif bar is not None:
                bar.done(task, path, result.url)
    if bar is not None:
        bar.stop()
        elapsed = time.monotonic() - started
        rate = totals["bytes"] / elapsed / 1e6 if elapsed > 0 else 0.0
        print(
            f"{totals['files']} file(s), {totals['bytes']} bytes in {elapsed:.1f} s"
            f" ({rate:.1f} MB/s); {totals['retries']} retries,"
            f" {totals['resumed']} resumed, {totals['failed']} failed",
            file=sys.stderr,
        )
    return status


def bar_print(bar: _Bars | None, text: str) -> None:
    if bar is not None:
        bar.progress.console.print(text)
    else:
        print(text, file=sys.stderr)


class _Bars:
    """One rich progress bar per file, on stderr."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.progress.start()

    def add(self, path: str) -> Any:
        return self.progress.add_task(os.path.basename(path), total=os.path.getsize(path))

    def reporter(self, task: Any) -> Callable[[ProgressReport], None]:
        def update(report: ProgressReport) -> None:
            self.progress.update(task, completed=report.acknowledged, total=report.total)

        return update

    def done(self, task: Any, path: str, url: str) -> None:
        self.progress.update(task, completed=self.progress.tasks[task].total)
        self.progress.console.print(f"[green]done[/green] {path} → {url}")

    def fail(self, task: Any, path: str) -> None:
        self.progress.update(task, description=f"{os.path.basename(path)} (failed)")

    def stop(self) -> None:
        self.progress.stop()


def _endpoint_of(url: str) -> str:
    return url.rsplit("/", 1)[0] + "/"


def _on_upload(args: argparse.Namespace, command: str, action: Callable[[Any], Any]) -> Any:
    """``action(client)`` for ``tether status``/``cancel``; an int exit status on failure."""
    from tether.client import Client, UploadFailed

    try:
        with Client(
            _endpoint_of(args.url),
            protocol=args.protocol,
            headers=_headers(args.header),
            resume=False,
        ) as client:
            return action(client)
    except ValueError as exc:
        print(f"tether {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UploadFailed as exc:
        print(f"tether {command}: {exc}", file=sys.stderr)
        return EXIT_FAILED


def run_status(args: argparse.Namespace) -> int:
    import json

    status = _on_upload(args, "status", lambda client: client.status(args.url))
    if isinstance(status, int):
        return status
    if args.json:
        print(json.dumps(status.__dict__))
        return 0
    share = f" ({100 * (status.offset or 0) / status.length:.1f}%)" if status.length else ""
    print(f"url:      {status.url}")
    print(f"offset:   {status.offset}{share}")
    print(f"length:   {status.length if status.length is not None else 'not yet known'}")
    print(f"complete: {'yes' if status.complete else 'no'}")
    if status.expires:
        print(f"expires:  {status.expires}")
    for key, value in status.metadata.items():
        print(f"metadata: {key}={value}")
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    failed = _on_upload(args, "cancel", lambda client: client.cancel(args.url))
    if isinstance(failed, int):
        return failed
    print(f"cancelled {args.url}", file=sys.stderr)
    return 0
