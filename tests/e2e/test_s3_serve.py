"""``tether serve --storage s3://…`` against a real S3 server (the local Ceph RGW): a real
tus client's upload in chunks that do not match the part size, read back with GET, and clear
start-up errors for a missing bucket or refused credentials."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tusclient.client import TusClient

from tests.support.rgw import S3Service
from tests.support.server import ServerProcess
from tether.storage.s3 import WRITER_PARTS

pytestmark = [pytest.mark.e2e, pytest.mark.s3]

MiB = 1024 * 1024


@pytest.fixture
def s3_server(s3_gateway: S3Service, tmp_path: Path) -> Iterator[ServerProcess]:
    url = s3_gateway.url(s3_gateway.new_bucket(), "uploads")
    with ServerProcess(tmp_path / "server", storage_url=url) as proc:
        yield proc


@pytest.mark.parametrize("chunk", [3 * MiB, 8 * MiB, None])
def test_tuspy_upload_to_s3(s3_server: ServerProcess, chunk: int | None) -> None:
    data = os.urandom(21 * MiB + 7)
    client = TusClient(s3_server.url)
    kwargs = {"chunk_size": chunk} if chunk else {}
    uploader = client.uploader(file_stream=io.BytesIO(data), metadata={"name": "a.bin"}, **kwargs)
    uploader.upload()
    assert uploader.url is not None
    with httpx.Client(timeout=30) as http:
        head = http.head(uploader.url, headers={"Tus-Resumable": "1.0.0"})
        assert head.headers["Upload-Offset"] == str(len(data))
        got = http.get(uploader.url)
        assert got.status_code == 200
        assert hashlib.sha256(got.content).hexdigest() == hashlib.sha256(data).hexdigest()
        ranged = http.get(uploader.url, headers={"Range": "bytes=8388600-8388620"})
        assert ranged.status_code == 206 and ranged.content == data[8388600:8388621]
        options = http.options(s3_server.url)
        # The store's limit: 8 MiB parts, WRITER_PARTS of them.
        assert options.headers["Tus-Max-Size"] == str(8 * MiB * WRITER_PARTS)


def _serve(url: str, tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", "serve", "--port", "0", "--storage", url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )


@pytest.mark.parametrize(
    ("bucket", "secret", "message"),
    [
        ("no-such-bucket", None, "does not exist; create it first"),
        (None, "wrong", "refused these credentials"),
    ],
)
def test_unusable_bucket_stops_the_start_with_a_message(
    s3_gateway: S3Service, tmp_path: Path, bucket: str | None, secret: str | None, message: str
) -> None:
    env = dict(os.environ)
    if secret is not None:
        env["AWS_SECRET_ACCESS_KEY"] = secret
    result = _serve(s3_gateway.url(bucket or s3_gateway.new_bucket(), "x"), tmp_path, env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "Unclosed" not in result.stderr
