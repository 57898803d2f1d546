"""Server settings: one dataclass, filled from flags and ``TETHER_*`` variables by the CLI."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 1080
    base_path: str = "/files/"
    state_url: str = "sqlite:///./tether-data/state.db"
    storage_url: str = "file://./tether-data/uploads"
    node_id: str = field(default_factory=lambda: socket.gethostname().split(".")[0] or "node")
    max_size: int | None = None
    expire_after: float | None = 24 * 3600.0
    durability: str = "process"  # "process" | "machine"
    trust_forwarded: bool = False
    cors_origins: tuple[str, ...] = ("*",)
    allow_download: bool = True
    body_idle_timeout: float = 60.0
    commit_interval: int = 4 * 1024 * 1024
    max_metadata_bytes: int = 8192
    graceful_timeout: float = 30.0
    access_log: bool = True

    def __post_init__(self) -> None:
        if not self.base_path.startswith("/"):
            object.__setattr__(self, "base_path", "/" + self.base_path)
        if not self.base_path.endswith("/"):
            object.__setattr__(self, "base_path", self.base_path + "/")
        if self.durability not in ("process", "machine"):
            raise ValueError("durability must be 'process' or 'machine'")
        if self.commit_interval < 64 * 1024:
            raise ValueError("commit interval must be at least 64 KiB")
