"""Node ids in upload URLs (for load balancers that route by them): who puts them there,
and that no node ever needs them: any node serves any upload id, with a node part or
without, and of nodes that no longer exist."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tether.engine import EngineConfig, UploadService
from tether.server.app import TetherApp
from tether.server.config import ServerConfig
from tether.state.memory import MemoryStateStore
from tether.storage.memory import MemoryByteStore

TUS = {"Tus-Resumable": "1.0.0"}
OCTET = {**TUS, "Content-Type": "application/offset+octet-stream"}


@pytest.mark.parametrize(
    ("state_url", "setting", "expected"),
    [
        ("postgresql://db/uploads", "auto", True),
        ("postgres://db/uploads", "auto", True),
        ("redis://cache:6379/0", "auto", True),
        ("rediss://cache:6379/0", "auto", True),
        ("sqlite:///./state.db", "auto", False),
        ("memory://", "auto", False),
        ("sqlite:///./state.db", "on", True),
        ("postgresql://db/uploads", "off", False),
    ],
)
def test_on_by_default_with_a_shared_state_store(
    state_url: str, setting: str, expected: bool
) -> None:
    config = ServerConfig(node_id="n1", state_url=state_url, node_in_url=setting)
    assert config.node_in_ids is expected


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"node id 'a\.b' is not valid"):
        ServerConfig(node_id="a.b")
    with pytest.raises(ValueError, match="node_in_url must be one of auto, on, off"):
        ServerConfig(node_id="n1", node_in_url="yes")
    with pytest.raises(ValueError, match="not valid"):
        EngineConfig(node_id="a/b", node_in_ids=True)


def test_the_default_node_id_is_valid() -> None:
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", ServerConfig().node_id)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--node-id", "n1.eu"], {}, "argument --node-id: node id 'n1.eu' is not valid"),
        ([], {"TETHER_NODE_ID": "a/b"}, "argument --node-id: node id 'a/b' is not valid"),
        (["--node-in-url", "maybe"], {}, "argument --node-in-url: invalid choice"),
    ],
)
def test_cli_refuses_unsafe_node_ids(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tether.cli", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


class Cluster:
    """Nodes in one process sharing one state store and one byte store."""

    def __init__(self, stack: contextlib.AsyncExitStack) -> None:
        self.stack = stack
        self.state = MemoryStateStore()
        self.storage = MemoryByteStore()

    async def node(self, node_id: str, node_in_url: str = "on") -> httpx.AsyncClient:
        config = ServerConfig(node_id=node_id, node_in_url=node_in_url, access_log=False)
        engine = EngineConfig(node_id=node_id, node_in_ids=config.node_in_ids)
        app = TetherApp(config, UploadService(self.state, self.storage, engine))
        return await self.stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://lb")
        )


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        yield Cluster(stack)


async def create(client: httpx.AsyncClient, length: int) -> str:
    response = await client.post("/files/", headers={**TUS, "Upload-Length": str(length)})
    assert response.status_code == 201, response.text
    return response.headers["location"]


async def test_created_urls_name_the_node(cluster: Cluster) -> None:
    n1 = await cluster.node("n1")
    location = await create(n1, 3)
    assert re.fullmatch(r"http://lb/files/n1\.[0-9a-f]{32}", location), location
    # The IETF draft's creation too (a complete upload in one request).
    ietf = await n1.post(
        "/files/",
        headers={"Upload-Draft-Interop-Version": "6", "Upload-Complete": "?1"},
        content=b"abc",
    )
    assert ietf.status_code == 201, ietf.text
    assert re.fullmatch(r"http://lb/files/n1\.[0-9a-f]{32}", ietf.headers["location"])


async def test_off_leaves_ids_plain(cluster: Cluster) -> None:
    plain = await cluster.node("n1", node_in_url="off")
    assert re.fullmatch(r"http://lb/files/[0-9a-f]{32}", await create(plain, 1))


async def test_any_node_serves_any_id(cluster: Cluster) -> None:
    n1, n2 = await cluster.node("n1"), await cluster.node("n2")
    old = await cluster.node("old", node_in_url="off")  # ids without a node part
    gone = await cluster.node("gone")  # a node that is never asked again
    for creator in (n1, old, gone):
        location = await create(creator, 6)
        for at, (node, chunk) in enumerate([(n2, b"ab"), (n1, b"cd"), (n2, b"ef")]):
            response = await node.patch(
                location, headers={**OCTET, "Upload-Offset": str(2 * at)}, content=chunk
            )
            assert response.status_code == 204, response.text
        assert (await n2.get(location)).content == b"abcdef"
        assert (await n1.head(location, headers=TUS)).headers["upload-offset"] == "6"


async def test_concatenation_across_nodes(cluster: Cluster) -> None:
    n1, n2 = await cluster.node("n1"), await cluster.node("n2")
    parts = []
    for node, data in ((n1, b"left "), (n2, b"right")):
        response = await node.post(
            "/files/",
            headers={**OCTET, "Upload-Length": str(len(data)), "Upload-Concat": "partial"},
            content=data,
        )
        assert response.status_code == 201, response.text
        parts.append(httpx.URL(response.headers["location"]).path)
    final = await n2.post("/files/", headers={**TUS, "Upload-Concat": "final;" + " ".join(parts)})
    assert final.status_code == 201, final.text
    assert final.headers["location"].startswith("http://lb/files/n2.")
    assert (await n1.get(final.headers["location"])).content == b"left right"


# ("." and ".." are covered in tests/protocol/test_ids.py: httpx would normalise them away.)
@pytest.mark.parametrize("path", ["/files/a.b.c", "/files/.abc", "/files/abc.", "/files/n1./x"])
async def test_other_dotted_paths_are_not_uploads(cluster: Cluster, path: str) -> None:
    n1 = await cluster.node("n1")
    assert (await n1.head(path, headers=TUS)).status_code == 404
