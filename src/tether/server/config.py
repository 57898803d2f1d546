"""Server settings: one dataclass, filled from flags and ``TETHER_*`` variables by the CLI."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from tether.protocol.ids import check_node_id, node_id_from_host

# State stores that several machines share: a node on one of these is in a cluster, where
# load balancers may route by the node id in upload URLs (``node_in_url="auto"``).
SHARED_STATE_SCHEMES = ("postgresql", "postgres", "redis", "rediss")
NODE_IN_URL = ("auto", "on", "off")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 1080
    base_path: str = "/files/"
    state_url: str = "sqlite:///./tether-data/state.db"
    storage_url: str = "file://./tether-data/uploads"
    node_id: str = field(default_factory=lambda: node_id_from_host(socket.gethostname()))
    # Whether upload URLs carry this node's id (``/files/n1.<hex>``) for load balancers
    # that route by it: "on", "off", or "auto" = on when the state store is shared.
    node_in_url: str = "auto"
    max_size: int | None = None
    expire_after: float | None = 24 * 3600.0
    durability: str = "process"  # "process" | "machine"
    trust_forwarded: bool = False
    cors_origins: tuple[str, ...] = ("*",)
    allow_download: bool = True
    body_idle_timeout: float = 60.0
    commit_interval: int = 4 * 1024 * 1024
    commit_period: float = 0.25
    quiet_commit: float = 1.0
    max_metadata_bytes: int = 8192
    graceful_timeout: float = 30.0
    access_log: bool = True

    def __post_init__(self) -> None:
        if not self.base_path.startswith("/"):
            object.__setattr__(self, "base_path", "/" + self.base_path)
        if not self.base_path.endswith("/"):
            object.__setattr__(self, "base_path", self.base_path + "/")
        check_node_id(self.node_id)
        if self.node_in_url not in NODE_IN_URL:
            raise ValueError(f"node_in_url must be one of {', '.join(NODE_IN_URL)}")
        if self.durability not in ("process", "machine"):
            raise ValueError("durability must be 'process' or 'machine'")
        if self.commit_interval < 64 * 1024:
            raise ValueError("commit interval must be at least 64 KiB")
        if not (0 <= self.commit_period < float("inf")):
            raise ValueError("commit period must be a number of seconds, 0 or more")
        if not (0 <= self.quiet_commit < float("inf")):
            raise ValueError("quiet commit must be a number of seconds, 0 or more")

    @property
    def node_in_ids(self) -> bool:
        """Whether the ids of uploads this node creates start with its node id."""
        if self.node_in_url == "auto":
            return self.state_url.partition(":")[0].lower() in SHARED_STATE_SCHEMES
        return self.node_in_url == "on"
