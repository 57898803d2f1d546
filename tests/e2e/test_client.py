"""tether's client against real servers, through a proxy that cuts, resets and stalls
connections: 50 uploads of 0 B to 64 MiB, a client killed with SIGKILL and started again,
a parallel upload with a part cut mid-way, and tus-node-server (a real Node process)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.faultproxy import FaultProxy, Faults
from tests.support.server import ServerProcess, free_port
from tether.client import AsyncClient, Cancelled, Client, ResumeStore, Settings, UploadFailed

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
PEER = Path(__file__).resolve().parents[2] / "bench" / "peer"


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("tether"), extra_args=["--no-access-log"]) as proc:
        yield proc


def make_file(path: Path, size: int, seed: int) -> str:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def served_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with httpx.stream("GET", url, timeout=30) as response:
        assert response.status_code == 200, response.status_code
        for chunk in response.iter_bytes():
            digest.update(chunk)
    return digest.hexdigest()


def direct(server: ServerProcess, url: str) -> str:
    """The same upload URL, on the server itself rather than through the proxy."""
    return server.url + url.rsplit("/", 1)[1]


def test_fifty_uploads_through_cuts_resets_and_stalls(
    tether: ServerProcess, tmp_path: Path
) -> None:
    rng = random.Random(2024)
    sizes = [0, 1, 64 * MiB] + [int(2 ** rng.uniform(10, 26)) for _ in range(47)]
    chunk = 4 * MiB
    faults = Faults(cut=0.2, reset=0.1, stall=0.05, after_max=10 * MiB, stall_seconds=2.0)
    settings = Settings(chunk_size=chunk, retries=30, backoff_base=0.02, backoff_cap=0.2)
    sent = 0
    results = []
    with (
        FaultProxy(tether.port, faults, seed=7) as proxy,
        Client(
            proxy.url, settings=settings, timeout=1.0, resume=ResumeStore(tmp_path / "r.json")
        ) as client,
    ):
        for index, size in enumerate(sizes):
            path = tmp_path / f"f{index}"
            digest = make_file(path, size, index)
            result = client.upload(path, digest=True)
            assert result.size == size and result.sha256 == digest
            results.append(result)
            sent += result.sent
            assert served_sha256(direct(tether, result.url)) == digest, f"file {index}"
            path.unlink()
        counters = proxy.counters
    total = sum(sizes)
    retries = sum(r.retries for r in results)
    print(
        f"\n50 uploads, {total / MiB:.1f} MiB, sent {sent / MiB:.1f} MiB;"
        f" proxy: {counters}; client retries {retries}"
    )
    assert counters.faults >= 20  # the proxy did its job
    assert sent < 1.1 * total + chunk * counters.faults


def test_a_client_killed_mid_upload_continues_from_the_servers_offset(
    tether: ServerProcess, tmp_path: Path
) -> None:
    path = tmp_path / "big.bin"
    digest = make_file(path, 48 * MiB, 1)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    store = tmp_path / "cache" / "tether" / "uploads.json"
    command = [
        sys.executable, "-m", "tether.cli", "upload", str(path), "--json", "--chunk-size", "1MiB",
        "--digest",
    ]  # fmt: skip
    with FaultProxy(tether.port, Faults(rate=24 * MiB)) as proxy:
        first = subprocess.Popen(
            [*command, "--url", proxy.url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            url, before = None, 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and before < 8 * MiB:
                time.sleep(0.1)
                if url is None and store.exists():
                    entries = json.loads(store.read_text())
                    url = next((e["url"] for e in entries.values() if e.get("url")), None)
                if url is not None:
                    head = httpx.head(direct(tether, url), headers={"Tus-Resumable": "1.0.0"})
                    before = int(head.headers["Upload-Offset"])
            assert url is not None and 8 * MiB <= before < 48 * MiB, (url, before)
        finally:
            first.send_signal(signal.SIGKILL)
            first.communicate(timeout=10)
        head = httpx.head(direct(tether, url), headers={"Tus-Resumable": "1.0.0"})
        at_kill = int(head.headers["Upload-Offset"])
        assert at_kill >= before
        second = subprocess.run(
            [*command, "--url", proxy.url], env=env, capture_output=True, text=True, timeout=60
        )
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["resumed"] is True and report["url"] == url
    assert report["sha256"] == digest
    # Nothing the server had acknowledged was sent again.
    assert report["sent"] <= 48 * MiB - at_kill
    assert served_sha256(direct(tether, url)) == digest
    assert not json.loads(store.read_text())  # finished: forgotten


def test_parallel_upload_with_a_part_cut_mid_way(tether: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "p.bin"
    digest = make_file(path, 64 * MiB, 3)
    # The third connection is one of the four parts' (the first carried OPTIONS).
    faults = Faults(cut=1.0, after_min=5 * MiB, after_max=6 * MiB, only_connection=3)
    with (
        FaultProxy(tether.port, faults) as proxy,
        Client(proxy.url, resume=False, settings=Settings(backoff_base=0.05)) as client,
    ):
        result = client.upload(path, parallel=4)
        assert proxy.counters.cuts == 1
    assert len(result.parts) == 4 and result.retries >= 1
    assert served_sha256(direct(tether, result.url)) == digest


def test_async_client_and_the_ietf_draft_through_faults(
    tether: ServerProcess, tmp_path: Path
) -> None:
    path = tmp_path / "a.bin"
    digest = make_file(path, 20 * MiB, 4)
    faults = Faults(cut=0.5, after_min=1 * MiB, after_max=4 * MiB)
    settings = Settings(chunk_size=2 * MiB, backoff_base=0.02)

    async def main() -> list[str]:
        urls = []
        for protocol in ("tus", "ietf"):
            async with AsyncClient(
                proxy.url, protocol=protocol, settings=settings, resume=False
            ) as client:
                result = await client.upload(path)
                assert result.retries >= 1
                urls.append(result.url)
        return urls

    with FaultProxy(tether.port, faults, seed=3) as proxy:
        urls = asyncio.run(main())
    for url in urls:
        assert served_sha256(direct(tether, url)) == digest


def test_a_cancelled_upload_resumes_later(tether: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "c.bin"
    digest = make_file(path, 16 * MiB, 5)
    store = ResumeStore(tmp_path / "r.json")
    cancel = threading.Event()

    def progress(report: object) -> None:
        if getattr(report, "acknowledged", 0) >= 4 * MiB:
            cancel.set()

    settings = Settings(chunk_size=MiB)
    with (
        FaultProxy(tether.port, Faults(rate=16 * MiB)) as proxy,
        Client(proxy.url, resume=store, settings=settings) as client,
    ):
        with pytest.raises(Cancelled):
            client.upload(path, on_progress=progress, cancel=cancel)
        result = client.upload(path)
    assert result.resumed and result.sent <= 12 * MiB + MiB
    assert served_sha256(direct(tether, result.url)) == digest


def test_status_and_cancel_commands(tether: ServerProcess, tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    make_file(path, 1000, 6)
    with Client(tether.url, resume=False) as client:
        url = client.upload(path, metadata={"owner": "ana"}).url
    run = [sys.executable, "-m", "tether.cli"]
    shown = subprocess.run([*run, "status", url, "--json"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["offset"] == 1000 and status["complete"] and status["metadata"]["owner"] == "ana"
    assert subprocess.run([*run, "cancel", url], capture_output=True).returncode == 0
    gone = subprocess.run([*run, "status", url], capture_output=True, text=True)
    assert gone.returncode == 1 and "404" in gone.stderr


def test_upload_command_exit_codes(tether: ServerProcess, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "tether.cli", "upload"]
    usage = subprocess.run(
        [*run, str(tmp_path / "missing"), "--url", tether.url], capture_output=True, text=True
    )
    assert usage.returncode == 2 and "not a file" in usage.stderr
    path = tmp_path / "x.bin"
    make_file(path, 10, 7)
    refused = subprocess.run(
        [*run, str(path), "--url", tether.url, "--header", "Tus-Resumable: 0.2.2", "--json"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["status"] == "failed"


# -- tus-node-server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tus_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/test installs it)")
    if not (PEER / "node_modules").exists():
        subprocess.run(
            ["npm", "ci", "--prefix", str(PEER), "--no-audit", "--no-fund", "--loglevel=error"],
            check=True,
            timeout=300,
        )
    data = tmp_path_factory.mktemp("tus-node")
    port = free_port()
    proc = subprocess.Popen(
        [node, str(PEER / "server.mjs"), str(port), str(data)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.options(f"http://127.0.0.1:{port}/files")
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/files/", data
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("size", [0, 1, 20 * MiB + 3])
def test_tus_node_server(tus_node: tuple[str, Path], tmp_path: Path, size: int) -> None:
    endpoint, data = tus_node
    path = tmp_path / "n.bin"
    digest = make_file(path, size, 8)
    settings = Settings(chunk_size=4 * MiB)
    with Client(endpoint, resume=False, settings=settings) as client:
        result = client.upload(path, parallel=4, metadata={"kind": "test"})
        # @tus/server offers neither checksums nor concatenation: the client did without.
        assert result.parts == ()
        assert client.capabilities is not None
        assert client.capabilities.checksum("auto") is None
    stored = data / result.url.rsplit("/", 1)[1]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest


def test_tus_node_server_through_faults(tus_node: tuple[str, Path], tmp_path: Path) -> None:
    endpoint, data = tus_node
    port = int(endpoint.split(":")[2].split("/")[0])
    path = tmp_path / "nf.bin"
    digest = make_file(path, 24 * MiB, 9)
    with (
        FaultProxy(port, Faults(cut=0.5, after_min=MiB, after_max=6 * MiB), seed=5) as proxy,
        Client(
            proxy.url, resume=False, settings=Settings(chunk_size=4 * MiB, backoff_base=0.05)
        ) as client,
    ):
        try:
            result = client.upload(path)
        except UploadFailed as exc:  # pragma: no cover - the message is the diagnosis
            pytest.fail(str(exc))
    stored = data / result.url.rsplit("/", 1)[1]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
