"""Interoperability: real tus clients against a real ``tether serve`` process.

Two clients, used as their users use them:

* tuspy (PyPI ``tuspy``, module ``tusclient``), in process;
* tus-js-client 4.x under Node, driven by ``tests/js/upload.mjs`` in a subprocess (the
  test runs ``npm ci --prefix tests/js`` itself when ``tests/js/node_modules`` is missing).

Every upload is checked three ways: the bytes the server assembled on disk
(``<storage_dir>/<upload id>/data``), the tus ``HEAD`` (offset, length, metadata), and the
bytes a streamed ``GET`` of the upload URL returns; each must match the sha256 of the file the
client sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from tusclient.client import TusClient

from tests.support.server import ServerProcess

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
JS_DIR = Path(__file__).resolve().parents[1] / "js"
JS_SCRIPT = JS_DIR / "upload.mjs"
# The server's default --commit-interval: a streaming PATCH commits at least this often.
COMMIT_INTERVAL = 4 * MiB


# -- payloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    name: str
    path: Path
    size: int
    sha256: str


SIZES = {"0B": 0, "1B": 1, "5MiB": 5 * MiB, "64MiB": 64 * MiB}


@pytest.fixture(scope="module")
def payloads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Payload]:
    """One file of random bytes per size, made once for the module."""
    root = tmp_path_factory.mktemp("payloads")
    made = {}
    for name, size in SIZES.items():
        data = os.urandom(size)
        path = root / f"payload-{name}.bin"
        path.write_bytes(data)
        made[name] = Payload(name, path, size, hashlib.sha256(data).hexdigest())
    return made


def metadata_for(payload: Payload, client: str) -> dict[str, str]:
    return {
        "filename": f"{client}-{payload.name}.bin",
        "filetype": "application/x-tether-e2e",
        # Non-ASCII on purpose: metadata values are base64 of UTF-8.
        "note": "grüße ✓ from " + client,
    }


# -- servers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: starting one per test would cost ~1 s each."""
    with ServerProcess(tmp_path_factory.mktemp("tether") / "server") as proc:
        yield proc


def upload_id_of(server: ServerProcess, url: str) -> str:
    assert url.startswith(server.url), f"{url} is not under the creation URL {server.url}"
    upload_id = url[len(server.url) :]
    assert upload_id and "/" not in upload_id, url
    return upload_id


def head(url: str) -> httpx.Response:
    return httpx.head(url, headers=TUS, timeout=10)


def head_offset(url: str) -> int:
    response = head(url)
    assert response.status_code == 200, (response.status_code, response.text)
    return int(response.headers["upload-offset"])


def wait_for_offset(url: str, expected: int, timeout: float = 5.0) -> int:
    """Poll HEAD until the upload's offset is ``expected`` (or the time is up)."""
    deadline = time.monotonic() + timeout
    offset = head_offset(url)
    while offset != expected and time.monotonic() < deadline:
        time.sleep(0.05)
        offset = head_offset(url)
    return offset


def parse_metadata(header: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (part.strip() for part in header.split(","))):
        key, _, value = item.partition(" ")
        pairs[key] = base64.b64decode(value).decode()
    return pairs


def stored_files(directory: Path) -> list[Path]:
    """The files holding an assembled upload, in order: its ``data``, or for a
    concatenation the parts its ``parts.json`` lists (hard links, nothing copied)."""
    if (directory / "data").is_file():
        return [directory / "data"]
    manifest = directory / "parts.json"
    assert manifest.is_file(), f"no assembled upload in {directory}"
    return [directory / name for name, _ in json.loads(manifest.read_text())]


def sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(1024 * 1024):
                digest.update(block)
    return digest.hexdigest()


def verify_upload(
    server: ServerProcess,
    url: str,
    payload: Payload,
    metadata: dict[str, str] | None = None,
) -> httpx.Response:
    """The upload at ``url`` is complete and holds exactly ``payload``: on disk, by HEAD and by
    a streamed GET. Returns the HEAD response for further checks."""
    upload_id = upload_id_of(server, url)

    stored = stored_files(server.storage_dir / upload_id)
    assert sum(p.stat().st_size for p in stored) == payload.size
    assert sha256_files(stored) == payload.sha256, "bytes on disk differ from the bytes sent"

    response = head(url)
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["tus-resumable"] == "1.0.0"
    assert response.headers["upload-offset"] == str(payload.size)
    assert response.headers["upload-length"] == str(payload.size)
    # tus 1.0, HEAD: "The Server MUST prevent the client and/or proxies from caching the
    # response by adding the Cache-Control: no-store header".
    assert response.headers["cache-control"] == "no-store"
    if metadata is not None:
        assert parse_metadata(response.headers.get("upload-metadata", "")) == metadata

    digest = hashlib.sha256()
    received = 0
    with httpx.stream("GET", url, timeout=30) as download:
        assert download.status_code == 200, download.status_code
        assert download.headers["content-length"] == str(payload.size)
        if metadata is not None:
            assert download.headers["content-type"] == metadata["filetype"]
            assert (
                download.headers["content-disposition"]
                == f'attachment; filename="{metadata["filename"]}"'
            )
        for block in download.iter_bytes():
            digest.update(block)
            received += len(block)
    assert received == payload.size
    assert digest.hexdigest() == payload.sha256, "downloaded bytes differ from the bytes sent"
    return response


# -- tuspy ---------------------------------------------------------------------------------

WHOLE = None  # tuspy's default chunk size: the whole file in one PATCH

TUSPY_CASES = [
    ("0B", WHOLE),
    ("1B", WHOLE),
    ("1B", 1 * MiB),
    ("5MiB", 1 * MiB),
    ("5MiB", 5 * MiB),
    ("5MiB", 2 * MiB + 1),  # chunk boundaries off any power of two; last chunk is short
    ("64MiB", 5 * MiB),
    ("64MiB", WHOLE),
]


def chunk_id(chunk: int | None) -> str:
    if chunk is None:
        return "whole"
    return f"{chunk // MiB}MiB" if chunk % MiB == 0 else str(chunk)


def tuspy_uploader(endpoint: str, stream: Any, chunk_size: int | None, **kwargs: Any) -> Any:
    if chunk_size is not None:
        kwargs["chunk_size"] = chunk_size
    return TusClient(endpoint).uploader(file_stream=stream, **kwargs)


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    TUSPY_CASES,
    ids=[f"{size}-chunk{chunk_id(chunk)}" for size, chunk in TUSPY_CASES],
)
def test_tuspy_upload(
    tether: ServerProcess, payloads: dict[str, Payload], size: str, chunk_size: int | None
) -> None:
    payload = payloads[size]
    metadata = metadata_for(payload, "tuspy")
    # A stream we close ourselves: given a path, tuspy opens the file on every request and
    # never closes it (ResourceWarning, an error under this suite's warning filter).
    with payload.path.open("rb") as stream:
        uploader = tuspy_uploader(tether.url, stream, chunk_size, metadata=metadata)
        uploader.upload()
        assert uploader.offset == payload.size
        url = uploader.url
    verify_upload(tether, url, payload, metadata)


def test_tuspy_resumes_with_a_new_uploader_after_stopping(
    tether: ServerProcess, payloads: dict[str, Payload]
) -> None:
    """Stop after a few chunks (a short last one), then a new Uploader with only the URL
    finds the offset by HEAD and finishes."""
    payload = payloads["5MiB"]
    metadata = metadata_for(payload, "tuspy")
    stop_at = 2 * MiB + 1000
    with payload.path.open("rb") as stream:
        first = tuspy_uploader(tether.url, stream, 1 * MiB, metadata=metadata)
        first.upload(stop_at=stop_at)
        assert first.offset == stop_at
        url = first.url
    upload_id = upload_id_of(tether, url)
    assert not (tether.storage_dir / upload_id / "data").exists(), "assembled while incomplete"

    with payload.path.open("rb") as stream:
        second = tuspy_uploader(tether.url, stream, 1 * MiB, url=url)
        assert second.offset == stop_at  # from HEAD, in the constructor
        second.upload()
        assert second.offset == payload.size
    verify_upload(tether, url, payload, metadata)


def test_tuspy_resumes_after_server_sigkill(
    server: ServerProcess, payloads: dict[str, Payload]
) -> None:
    """Bytes the server acknowledged survive a SIGKILL of ``tether serve``; a new uploader
    resumes against the restarted server (same data directory and port)."""
    payload = payloads["5MiB"]
    metadata = metadata_for(payload, "tuspy")
    acknowledged = 3 * MiB
    with payload.path.open("rb") as stream:
        first = tuspy_uploader(server.url, stream, 1 * MiB, metadata=metadata)
        first.upload(stop_at=acknowledged)
        url = first.url
    server.kill()
    server.start()

    with payload.path.open("rb") as stream:
        second = tuspy_uploader(server.url, stream, 1 * MiB, url=url)
        assert second.offset == acknowledged
        second.upload()
    verify_upload(server, url, payload, metadata)


def start_patch(url: str, offset: int, content_length: int, body: bytes) -> socket.socket:
    """Open a tus PATCH by hand and send only ``body`` of its ``content_length`` bytes: a
    client that dies (or stalls) mid-request, which no client library can be made to do."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    head_lines = (
        f"PATCH {parts.path} HTTP/1.1\r\n"
        f"Host: {parts.netloc}\r\n"
        "Tus-Resumable: 1.0.0\r\n"
        "Content-Type: application/offset+octet-stream\r\n"
        f"Upload-Offset: {offset}\r\n"
        f"Content-Length: {content_length}\r\n"
        "\r\n"
    )
    sock.sendall(head_lines.encode("ascii") + body)
    return sock


def test_tuspy_resumes_after_connection_dropped_mid_patch(
    tether: ServerProcess, payloads: dict[str, Payload]
) -> None:
    """A PATCH whose connection drops mid-body: the server keeps every byte it received (tus
    1.0: "SHOULD always attempt to store as much of the received data as possible"), and a
    new tuspy uploader resumes from there."""
    payload = payloads["5MiB"]
    metadata = metadata_for(payload, "tuspy")
    data = payload.path.read_bytes()
    with payload.path.open("rb") as stream:
        creator = tuspy_uploader(tether.url, stream, WHOLE, metadata=metadata)
        url = creator.create_url()
    # Past one commit interval, and not on a commit boundary.
    sent = COMMIT_INTERVAL + 123_457
    start_patch(url, 0, payload.size, data[:sent]).close()
    assert wait_for_offset(url, sent) == sent

    with payload.path.open("rb") as stream:
        resumer = tuspy_uploader(tether.url, stream, 1 * MiB, url=url)
        assert resumer.offset == sent
        resumer.upload()
    verify_upload(tether, url, payload, metadata)


def test_tuspy_resumes_while_the_dead_patch_is_still_open(
    tether: ServerProcess, payloads: dict[str, Payload]
) -> None:
    """The usual resume race, made deterministic: the old PATCH's connection is still open
    (a client that died behind a NAT, or whose reset has not arrived yet) when a new client
    asks for the offset, and closes just after."""
    payload = payloads["5MiB"]
    data = payload.path.read_bytes()
    with payload.path.open("rb") as stream:
        url = tuspy_uploader(tether.url, stream, WHOLE).create_url()
    sent = 3 * MiB + 4321  # below one commit interval: nothing is committed mid-request
    stalled = start_patch(url, 0, payload.size, data[:sent])
    try:
        time.sleep(0.3)  # let the server read what was sent
        with payload.path.open("rb") as stream:
            resumer = tuspy_uploader(tether.url, stream, 1 * MiB, url=url)  # HEAD
            stalled.close()
            # Let the server finish with the dead request before the resumer goes on.
            wait_for_offset(url, sent, timeout=3)
            resumer.upload()
    finally:
        stalled.close()
    verify_upload(tether, url, payload)


# -- tus-js-client -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node() -> str:
    """Path of ``node``, after installing tests/js (``npm ci``) if it is not installed."""
    if not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot install tus-js-client from tests/js")
        done = subprocess.run(
            [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            pytest.fail(f"npm ci --prefix {JS_DIR} failed:\n{done.stdout}\n{done.stderr}")
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed: cannot run tus-js-client")
    return path


def run_js(
    node: str, server: ServerProcess, payload: Payload, chunk: str, *args: str
) -> dict[str, Any]:
    """Upload ``payload`` with tus-js-client; return what upload.mjs printed."""
    command = [node, str(JS_SCRIPT), server.url, str(payload.path), chunk, *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=JS_DIR)
    if done.returncode != 0:
        log_tail = "\n".join(server.log().splitlines()[-20:])
        pytest.fail(
            f"tus-js-client upload failed ({done.returncode}): {' '.join(command)}\n"
            f"stderr:\n{done.stderr}\nserver log (tail):\n{log_tail}"
        )
    result: dict[str, Any] = json.loads(done.stdout)
    assert result["bytes"] == payload.size
    return result


def meta_args(metadata: dict[str, str]) -> list[str]:
    return [arg for key, value in metadata.items() for arg in ("--meta", f"{key}={value}")]


def assert_only_resume_conflicts(requests: list[dict[str, Any]]) -> None:
    """With retries on, every failed request must be a PATCH's 409 (the resume race the
    retry is there for); anything else is a server error that a retry would have hidden."""
    failed = [r for r in requests if not 200 <= r["status"] < 300]
    assert all(r["method"] == "PATCH" and r["status"] == 409 for r in failed), failed


JS_CASES = [
    ("0B", "inf", "file"),
    ("1B", "inf", "buffer"),
    ("1B", str(1 * MiB), "file"),
    ("5MiB", str(1 * MiB), "file"),
    ("5MiB", "inf", "buffer"),
    ("5MiB", str(2 * MiB + 1), "stream"),
    ("64MiB", str(5 * MiB), "file"),
    ("64MiB", "inf", "file"),
    ("64MiB", str(16 * MiB), "stream"),
]


@pytest.mark.parametrize(
    ("size", "chunk", "source"),
    JS_CASES,
    ids=[
        f"{size}-chunk{chunk if chunk == 'inf' else chunk_id(int(chunk))}-{source}"
        for size, chunk, source in JS_CASES
    ],
)
def test_tus_js_client_upload(
    node: str,
    tether: ServerProcess,
    payloads: dict[str, Payload],
    size: str,
    chunk: str,
    source: str,
) -> None:
    payload = payloads[size]
    metadata = metadata_for(payload, "tus-js-client")
    result = run_js(node, tether, payload, chunk, "--source", source, *meta_args(metadata))
    requests = result["requests"]
    assert all(200 <= r["status"] < 300 for r in requests), requests
    assert [r["method"] for r in requests if r["method"] == "POST"] == ["POST"]
    if chunk != "inf" and payload.size:
        expected_patches = -(-payload.size // int(chunk))
        assert sum(r["method"] == "PATCH" for r in requests) == expected_patches
    verify_upload(tether, result["url"], payload, metadata)


def test_tus_js_client_resumes_from_previous_upload(
    node: str, tether: ServerProcess, payloads: dict[str, Payload]
) -> None:
    """Abort (no termination) once 2.5 MiB are acknowledged, i.e. after the third 1 MiB
    PATCH, then a fresh tus.Upload finds the upload with findPreviousUploads(),
    resumeFromPreviousUpload(), asks for the offset and finishes. Strict: no retries, and no
    request is in flight at the abort, so nothing can race the resume."""
    payload = payloads["5MiB"]
    metadata = metadata_for(payload, "tus-js-client")
    result = run_js(
        node,
        tether,
        payload,
        str(1 * MiB),
        "--abort-after-bytes",
        str(2 * MiB + MiB // 2),
        "--abort-when",
        "accepted",
        *meta_args(metadata),
    )
    requests = result["requests"]
    assert all(200 <= r["status"] < 300 for r in requests), requests
    assert result["aborted_at"] == 3 * MiB
    assert result["resumed_from"] == [3 * MiB]
    assert [r["method"] for r in requests] == ["POST"] + ["PATCH"] * 3 + ["HEAD"] + ["PATCH"] * 2
    # The fresh Upload patched from exactly the offset HEAD gave.
    assert requests[5]["upload_offset"] == str(3 * MiB)
    verify_upload(tether, result["url"], payload, metadata)


def test_tus_js_client_resumes_from_upload_url_after_mid_request_abort(
    node: str, tether: ServerProcess, payloads: dict[str, Payload]
) -> None:
    """One PATCH for the whole 64 MiB, aborted mid-body; a fresh tus.Upload given the stored
    `uploadUrl` resumes from what the server kept.

    Runs with tus-js-client's retry on, as its defaults are.
    """
    payload = payloads["64MiB"]
    metadata = metadata_for(payload, "tus-js-client")
    result = run_js(
        node,
        tether,
        payload,
        "inf",
        "--source",
        "buffer",
        "--abort-after-bytes",
        str(24 * MiB),
        "--resume-via",
        "url",
        "--retry-delays",
        "0,200,1000",
        *meta_args(metadata),
    )
    assert_only_resume_conflicts(result["requests"])
    assert result["resumed_from"], "the resumed Upload never asked for the offset"
    # Usually the server kept part of the body. Under load it can read all of it before
    # the abort reaches the socket, and the resumed Upload then finds it complete.
    assert 0 < result["resumed_from"][0] <= payload.size
    verify_upload(tether, result["url"], payload, metadata)


def assert_concatenated(result: dict[str, Any], parts: int) -> list[str]:
    """``parts`` partial uploads were created, then one final upload naming them all; returns
    the partial upload URLs in the order the final upload names them."""
    posts = [r for r in result["requests"] if r["method"] == "POST"]
    partial_urls = [r["location"] for r in posts if r["upload_concat"] == "partial"]
    finals = [r for r in posts if (r["upload_concat"] or "").startswith("final;")]
    assert len(partial_urls) == parts, posts
    assert len(finals) == 1, posts
    assert finals[0]["location"] == result["url"]
    named: list[str] = finals[0]["upload_concat"][len("final;") :].split()
    assert sorted(named) == sorted(partial_urls)
    return named


@pytest.mark.parametrize(
    ("size", "chunk", "source"),
    [
        # Two of the three partial uploads are empty. A Buffer, because tus-js-client 4.3.1
        # cannot slice an empty range of an fs.ReadStream (createReadStream end: -1).
        ("1B", "inf", "buffer"),
        ("5MiB", "inf", "file"),
        ("64MiB", str(8 * MiB), "file"),
    ],
    ids=["1B-buffer", "5MiB-whole", "64MiB-chunk8MiB"],
)
def test_tus_js_client_parallel_uploads_concatenate(
    node: str,
    tether: ServerProcess,
    payloads: dict[str, Payload],
    size: str,
    chunk: str,
    source: str,
) -> None:
    """parallelUploads=3: three partial uploads (Upload-Concat: partial), then a final one
    (Upload-Concat: final;...) that the server assembles in order."""
    payload = payloads[size]
    metadata = metadata_for(payload, "tus-js-client")
    result = run_js(
        node, tether, payload, chunk, "--parallel", "3", "--source", source,
        *meta_args(metadata),
    )  # fmt: skip
    assert all(200 <= r["status"] < 300 for r in result["requests"]), result["requests"]
    partial_urls = assert_concatenated(result, 3)
    final_head = verify_upload(tether, result["url"], payload, metadata)
    concat = final_head.headers["upload-concat"]
    assert concat.startswith("final;")
    assert [urlsplit(u).path for u in concat[len("final;") :].split()] == [
        urlsplit(u).path for u in partial_urls
    ]
    assert sum(head_offset(u) for u in partial_urls) == payload.size


def test_tus_js_client_parallel_upload_resumes_after_abort(
    node: str, tether: ServerProcess, payloads: dict[str, Payload]
) -> None:
    """parallelUploads=3 aborted mid-way; a fresh tus.Upload resumes every partial upload from
    its URL storage entry (parallelUploadUrls), then concatenates."""
    payload = payloads["64MiB"]
    metadata = metadata_for(payload, "tus-js-client")
    result = run_js(
        node,
        tether,
        payload,
        str(4 * MiB),
        "--parallel",
        "3",
        "--abort-after-bytes",
        str(20 * MiB),
        "--retry-delays",
        "0,200,1000",
        *meta_args(metadata),
    )
    assert_only_resume_conflicts(result["requests"])
    assert len(result["resumed_from"]) >= 3, "each partial upload asks for its offset"
    assert any(offset > 0 for offset in result["resumed_from"])
    assert_concatenated(result, 3)
    verify_upload(tether, result["url"], payload, metadata)
