"""The ASGI application: routing, body streaming and response sending.

The only module that knows ASGI. It routes a path to an upload id, lets the protocol layer
turn the request into a command, runs the command on the engine, and sends the response
value the protocol layer renders. Errors become responses in one place (``_fail``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from tether.engine import UploadService
from tether.observe import Metrics
from tether.protocol import errors
from tether.protocol.commands import (
    Append,
    Command,
    Create,
    Dialect,
    Download,
    Head,
    Options,
    Terminate,
)
from tether.protocol.errors import UploadError
from tether.protocol.headers import parse_range
from tether.protocol.ids import UPLOAD_ID
from tether.protocol.message import Headers, Limits
from tether.protocol.requests import detect_dialect, parse_request
from tether.protocol.responses import Renderer, Response
from tether.server.asgi import Receive, Scope, Send
from tether.server.body import BodyReader
from tether.server.config import ServerConfig
from tether.server.protocol import EXTENSION as INTERIM
from tether.server.protocol import MESSAGE as INTERIM_MESSAGE
from tether.server.protocol import SPLICE
from tether.state.base import StateError, StoreUnavailable, UploadRecord
from tether.storage.base import ObjectMissing, StorageError

log = logging.getLogger("tether.request")

_FILENAME_SAFE = re.compile(r"[A-Za-z0-9._ -]{1,200}")

# A request header a proxy sets when it cannot forward interim (1xx) responses: the IETF
# draft's 104 is then left out, as the draft allows. Harmless from anyone else.
NO_INTERIM = "tether-no-interim"

EXPOSED = (
    "Location, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Expires, Upload-Concat, Upload-Complete, Upload-Incomplete, Upload-Limit, "
    "Upload-Draft-Interop-Version, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, "
    "Tus-Checksum-Algorithm, Content-Range"
)
ALLOWED_HEADERS = (
    "Authorization, Content-Type, Content-Disposition, Upload-Offset, Upload-Length, "
    "Upload-Metadata, Upload-Defer-Length, Upload-Concat, Upload-Checksum, Upload-Complete, "
    "Upload-Incomplete, Upload-Draft-Interop-Version, Tus-Resumable, X-HTTP-Method-Override, "
    "X-Requested-With"
)


class RequestLog:
    """What one request did, for its log line."""

    __slots__ = ("client", "extra", "upload_id")

    def __init__(self, client: str | None) -> None:
        self.client = client
        self.upload_id: str | None = None
        self.extra: dict[str, Any] = {}


class TetherApp:
    def __init__(self, config: ServerConfig, service: UploadService) -> None:
        self.config = config
        self.service = service
        self.metrics = Metrics()
        self.limits = Limits(max_size=config.max_size, max_metadata_bytes=config.max_metadata_bytes)
        self.renderer = Renderer(max_size=config.max_size, url_for=self._path_for)
        self._reaper: asyncio.Task[None] | None = None
        self.draining = False
        # No quiet signal where the engine would ignore it (``UploadService.whole_parts``).
        self._quiet = None if service.whole_parts else config.quiet_commit

    # -- lifespan ----------------------------------------------------------------------

    async def startup(self) -> None:
        # Fail at start, with the store's own message, rather than on the first upload.
        await self.service.state.check()
        await self.service.storage.check()
        if self.config.expire_after is not None:
            period = max(1.0, min(60.0, self.config.expire_after / 2))
            self._reaper = asyncio.get_running_loop().create_task(self.service.run_reaper(period))

    async def shutdown(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await self.service.state.close()
        await self.service.storage.close()

    def begin_drain(self) -> None:
        """Stop every streaming append: each commits what it received and answers 503."""
        self.draining = True
        self.service.interrupt_all(errors.shutting_down())

    # -- URLs --------------------------------------------------------------------------

    def _path_for(self, upload_id: str) -> str:
        return f"{self.config.base_path}{upload_id}"

    def _absolute(self, scope: Scope, headers: Headers, path: str) -> str:
        scheme = scope.get("scheme", "http")
        host = headers.get("host")
        if self.config.trust_forwarded:
            forwarded = headers.get("forwarded")
            if forwarded:
                first = forwarded.split(",", 1)[0]
                for part in first.split(";"):
                    key, _, value = part.strip().partition("=")
                    value = value.strip('"')
                    if key.lower() == "proto" and value in ("http", "https"):
                        scheme = value
                    elif key.lower() == "host" and value:
                        host = value
            else:
                proto = headers.get("x-forwarded-proto")
                if proto:
                    scheme = proto.split(",", 1)[0].strip().lower()
                fwd_host = headers.get("x-forwarded-host")
                if fwd_host:
                    host = fwd_host.split(",", 1)[0].strip()
        if not host or not re.fullmatch(r"[A-Za-z0-9.:\[\]_-]+", host):
            server = scope.get("server") or ("localhost", None)
            host = server[0] if server[1] in (None, 80, 443) else f"{server[0]}:{server[1]}"
        return f"{scheme}://{host}{path}"

    def upload_id_from_url(self, url: str) -> str | None:
        path = urlsplit(url).path
        base = self.config.base_path
        if not path.startswith(base):
            return None
        upload_id = path[len(base) :]
        return upload_id if UPLOAD_ID.fullmatch(upload_id) else None

    def _client(self, scope: Scope, headers: Headers) -> str | None:
        if self.config.trust_forwarded:
            forwarded_for = headers.get("x-forwarded-for")
            if forwarded_for:
                return forwarded_for.split(",", 1)[0].strip()
        client = scope.get("client")
        return str(client[0]) if client else None

    # -- ASGI --------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("cannot start: %s", exc)
                    with contextlib.suppress(Exception):
                        await self.shutdown()
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        entry = RequestLog(None)
        dialect: Dialect | None = None
        origin: str | None = None
        try:
            # Looked up first, so even a request refused for its headers gets CORS headers
            # a browser can read.
            origin = _raw_origin(scope["headers"])
            headers = Headers.from_asgi(scope["headers"], self.limits)
            entry.client = self._client(scope, headers)
            if path in ("/health", "/ready", "/metrics") and method in ("GET", "HEAD"):
                response = await self._service_endpoint(path)
            else:
                upload_id = self._route(path)
                entry.upload_id = upload_id
                if (
                    method == "OPTIONS"
                    and origin is not None
                    and "access-control-request-method" in headers
                ):
                    response = self._preflight(origin)
                else:
                    try:
                        dialect = detect_dialect(headers)
                    except UploadError:
                        dialect = None
                    command = parse_request(
                        method, upload_id, headers, self.limits, self.upload_id_from_url
                    )
                    result = await self._run(command, scope, headers, receive, send, entry)
                    if result is None:  # streamed already
                        self._log(method, path, 200, entry, started)
                        return
                    response = result
        except UploadError as exc:
            response = self.renderer.error(dialect, exc)
        except StoreUnavailable as exc:
            log.error("state store unavailable: %s", exc)
            response = self.renderer.error(
                dialect,
                UploadError(503, "state store unavailable", headers=(("Retry-After", "1"),)),
            )
        except (StateError, StorageError) as exc:
            log.exception("store failure: %s", exc)
            response = self.renderer.error(dialect, UploadError(500, "storage failure"))
        except Exception:
            log.exception("unhandled error", extra={"upload": entry.upload_id})
            response = self.renderer.error(dialect, UploadError(500, "internal error"))
        if origin is not None:
            self._cors(response, origin)
        await _send(send, response)
        self._log(method, path, response.status, entry, started)

    def _route(self, path: str) -> str | None:
        base = self.config.base_path
        if path == base or path == base[:-1]:
            return None
        if not path.startswith(base):
            raise errors.not_found("no such endpoint")
        upload_id = path[len(base) :]
        if not UPLOAD_ID.fullmatch(upload_id):
            raise errors.not_found("not an upload URL")
        return upload_id

    def _body(self, scope: Scope, receive: Receive) -> BodyReader:
        """A request's body, which the engine may have spliced when the server offers it."""
        splice = scope.get("extensions", {}).get(SPLICE)
        return BodyReader(receive, self.config.body_idle_timeout, splice, quiet=self._quiet)

    async def _run(
        self,
        command: Command,
        scope: Scope,
        headers: Headers,
        receive: Receive,
        send: Send,
        entry: RequestLog,
    ) -> Response | None:
        service = self.service
        if self.draining and isinstance(command, (Create, Append)):
            raise errors.shutting_down()
        if isinstance(command, Options):
            return self.renderer.options()
        if isinstance(command, Head):
            record = await service.head(command.upload_id, client=entry.client)
            return self.renderer.head(command.dialect, record)
        if isinstance(command, Append):
            body = self._body(scope, receive)
            try:
                outcome = await service.append(command, body, client=entry.client, request=body)
            finally:
                body.close()
            self._note(entry, outcome.record, outcome.received)
            return self.renderer.appended(command.dialect, outcome.record)
        if isinstance(command, Create):
            body = self._body(scope, receive)
            interim = (
                command.dialect.is_ietf
                and INTERIM in scope.get("extensions", {})
                # RFC 9110 15.2: never a 1xx to an HTTP/1.0 client. Nor through a proxy that
                # says it cannot pass one on: nginx 1.22 takes a 1xx for the final response
                # and then stalls the connection (``tether lb nginx`` sets the header).
                and scope.get("http_version") != "1.0"
                and NO_INTERIM not in headers
            )
            location: str | None = None

            async def on_created(record: UploadRecord) -> None:
                nonlocal location
                entry.upload_id = record.id
                location = self._absolute(scope, headers, self._path_for(record.id))
                if interim:
                    # 104: the client learns where to resume before it sends the body.
                    await send(
                        {
                            "type": INTERIM_MESSAGE,
                            "status": 104,
                            "headers": _encode(
                                [
                                    ("Location", location),
                                    *self.renderer.resumption_supported(command.dialect, record),
                                ]
                            ),
                        }
                    )

            try:
                outcome = await service.create(
                    command, body, client=entry.client, request=body, on_created=on_created
                )
            except UploadError as exc:
                # The upload exists though its first chunk failed (460, 413, 507…): say
                # where it is, so the client can resume instead of starting over.
                if location is not None:
                    exc.headers = (*exc.headers, ("Location", location))
                raise
            finally:
                body.close()
            entry.upload_id = outcome.record.id
            self._note(entry, outcome.record, outcome.received)
            self.metrics.add("uploads_created_total")
            response = self.renderer.created(
                command.dialect, outcome.record, with_body=command.body.present
            )
            # Location is absolute, built from Host (or, when trusted, Forwarded headers).
            response.headers = [
                (k, self._absolute(scope, headers, v) if k == "Location" else v)
                for k, v in response.headers
            ]
            return response
        if isinstance(command, Terminate):
            await service.terminate(command.upload_id)
            self.metrics.add("uploads_terminated_total")
            return self.renderer.terminated(command.dialect)
        if isinstance(command, Download):
            if not self.config.allow_download:
                raise UploadError(405, "downloads are disabled on this server")
            await self._download(command, send, headers)
            return None
        raise AssertionError(f"unhandled command {command!r}")

    def _note(self, entry: RequestLog, record: Any, received: int) -> None:
        entry.extra = {
            "offset": record.offset,
            "bytes": received,
            "client_switches": record.client_switches,
            "node_switches": record.node_switches,
        }
        self.metrics.add("bytes_received_total", received)
        if record.complete:
            self.metrics.add("uploads_completed_total")

    async def _download(self, command: Download, send: Send, headers: Headers) -> None:
        record = await self.service.download(command.upload_id)
        size = record.length or 0
        status, start, end = 200, 0, size
        extra: list[tuple[str, str]] = []
        if command.range is not None:
            byte_range = parse_range(command.range, size)
            if byte_range is not None:
                status, start, end = 206, byte_range.start, byte_range.end
                extra.append(("Content-Range", f"bytes {start}-{end - 1}/{size}"))
        metadata = dict(record.metadata)
        content_type = "application/octet-stream"
        filetype = metadata.get("filetype") or metadata.get("contentType")
        if filetype and re.fullmatch(rb"[\w.+-]+/[\w.+-]+", filetype):
            content_type = filetype.decode()
        filename = metadata.get("filename") or metadata.get("name")
        if filename:
            try:
                name = filename.decode()
            except UnicodeDecodeError:
                name = ""
            if _FILENAME_SAFE.fullmatch(name):
                extra.append(("Content-Disposition", f'attachment; filename="{name}"'))
        start_message = {
            "type": "http.response.start",
            "status": status,
            "headers": _encode(
                [
                    ("Content-Length", str(end - start)),
                    ("Content-Type", content_type),
                    ("Accept-Ranges", "bytes"),
                    ("Tus-Resumable", "1.0.0"),
                    *extra,
                ]
            ),
        }
        started = False
        try:
            async for chunk in self.service.storage.read(command.upload_id, start, end):
                if not started:
                    await send(start_message)
                    started = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except ObjectMissing:
            if started:
                raise
            raise errors.gone("upload bytes are gone") from None
        if not started:
            await send(start_message)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _service_endpoint(self, path: str) -> Response:
        if path == "/health":
            return Response(200, [("Content-Type", "text/plain")], b"ok\n")
        if path == "/metrics":
            return Response(
                200, [("Content-Type", "text/plain; version=0.0.4")], self.metrics.render()
            )
        problems = []
        try:
            await self.service.state.check()
        except Exception as exc:
            problems.append(f"state: {exc}")
        try:
            await self.service.storage.check()
        except Exception as exc:
            problems.append(f"storage: {exc}")
        if self.draining:
            problems.append("draining")
        if problems:
            return Response(
                503, [("Content-Type", "text/plain")], ("\n".join(problems) + "\n").encode()
            )
        return Response(200, [("Content-Type", "text/plain")], b"ready\n")

    # -- CORS --------------------------------------------------------------------------

    def _allowed_origin(self, origin: str) -> str | None:
        origins = self.config.cors_origins
        if "*" in origins:
            return "*"
        return origin if origin in origins else None

    def _preflight(self, origin: str) -> Response:
        allowed = self._allowed_origin(origin)
        if allowed is None:
            return Response(403, [("Content-Type", "text/plain")], b"origin not allowed\n")
        return Response(
            204,
            [
                ("Access-Control-Allow-Methods", "POST, GET, HEAD, PATCH, DELETE, OPTIONS"),
                ("Access-Control-Allow-Headers", ALLOWED_HEADERS),
                ("Access-Control-Max-Age", "86400"),
            ],
        )

    def _cors(self, response: Response, origin: str) -> None:
        allowed = self._allowed_origin(origin)
        if allowed is None:
            return
        response.headers.append(("Access-Control-Allow-Origin", allowed))
        response.headers.append(("Access-Control-Expose-Headers", EXPOSED))
        if allowed != "*":
            response.headers.append(("Vary", "Origin"))

    # -- logging -----------------------------------------------------------------------

    def _log(self, method: str, path: str, status: int, entry: RequestLog, started: float) -> None:
        self.metrics.request(method, status)
        if status == 409:
            self.metrics.add("conflicts_total")
        if not self.config.access_log:
            return
        log.info(
            "%s %s %d",
            method,
            path,
            status,
            extra={
                "node": self.service.config.node_id,
                "upload": entry.upload_id,
                "client": entry.client,
                "status": status,
                "ms": round((time.perf_counter() - started) * 1000, 2),
                **entry.extra,
            },
        )


def _raw_origin(raw: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in raw:
        if name.lower() == b"origin":
            return value.decode("latin-1")
    return None


def _encode(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]


async def _send(send: Send, response: Response) -> None:
    headers = response.headers
    if response.status >= 200 and response.status not in (204, 304):
        # RFC 9110 8.6: no Content-Length on 1xx, 204 and 304.
        headers.append(("Content-Length", str(len(response.body))))
    await send(
        {"type": "http.response.start", "status": response.status, "headers": _encode(headers)}
    )
    await send({"type": "http.response.body", "body": response.body})
