"""Build the app from a config and serve it with uvicorn (uvloop + httptools)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from types import FrameType

import uvicorn

from tether.backends import open_state, open_storage, redact
from tether.engine import EngineConfig, UploadService
from tether.server.app import TetherApp
from tether.server.config import ServerConfig
from tether.server.protocol import protocol_factory, supported

log = logging.getLogger("tether.server")


def build_app(config: ServerConfig) -> TetherApp:
    durable = config.durability == "machine"
    state = open_state(config.state_url, durable=durable)
    storage = open_storage(config.storage_url, max_size=config.max_size)
    if storage.max_upload_size is not None and (
        config.max_size is None or config.max_size > storage.max_upload_size
    ):
        # Advertised in Tus-Max-Size, so clients learn the store's limit before uploading.
        if config.max_size is not None:
            log.warning(
                "--max-size lowered to %d, the most %s can hold",
                storage.max_upload_size,
                redact(config.storage_url),
            )
        config = dataclasses.replace(config, max_size=storage.max_upload_size)
    if 0 < config.body_idle_timeout <= config.quiet_commit:
        log.warning(
            "--quiet-commit %g is not below --body-timeout %g: a quiet body times out first,"
            " and nothing is committed for its silence",
            config.quiet_commit,
            config.body_idle_timeout,
        )
    engine = EngineConfig(
        node_id=config.node_id,
        max_size=config.max_size,
        expire_after=config.expire_after,
        durable=durable,
        commit_interval=config.commit_interval,
        commit_period=config.commit_period,
        node_in_ids=config.node_in_ids,
    )
    return TetherApp(config, UploadService(state, storage, engine))


class _Server(uvicorn.Server):
    """uvicorn, plus: on SIGTERM/SIGINT, streaming appends are told to commit and stop
    first, so a graceful shutdown never waits on a hung upload."""

    def __init__(self, config: uvicorn.Config, app: TetherApp) -> None:
        super().__init__(config)
        self.tether = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.tether.begin_drain)
        super().handle_exit(sig, frame)


def serve(config: ServerConfig) -> int:
    """Serve until stopped; the exit status: 0, or 3 when the server could not start."""
    app = build_app(config)
    log.info(
        "tether serving",
        extra={
            "node": config.node_id,
            "listen": f"http://{config.host}:{config.port}{config.base_path}",
            "state": redact(config.state_url),
            "storage": redact(config.storage_url),
            "durability": config.durability,
            "node_in_url": config.node_in_ids,
        },
    )
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop",
        # httptools with fewer body copies, spliced bodies and the IETF draft's 104
        # (server/protocol.py).
        http=protocol_factory if supported() else "httptools",  # type: ignore[arg-type]
        ws="none",
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        # tether reads Forwarded / X-Forwarded-* itself, and only with --trust-forwarded.
        proxy_headers=False,
        timeout_graceful_shutdown=int(config.graceful_timeout),
        timeout_keep_alive=30,
    )
    server = _Server(uv_config, app)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    server.run()
    return 0 if server.started else 3
