"""A whole file's upload, stepped by hand: discovery, the resume store, the sha256
metadata, and a parallel upload joined by concatenation. Also the resume store itself."""

from __future__ import annotations

import base64
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.client.test_flow import Driver, created, ok, status
from tether.client.errors import UploadFailed, UploadGone
from tether.client.flow import Settings
from tether.client.job import Concurrently, HashFile, Job
from tether.client.store import NoStore, ResumeStore, fingerprint
from tether.client.wire import Capabilities, Dialect, Request

END = "http://h/files/"
CAPS = Capabilities(extensions=frozenset({"creation", "concatenation"}))


def make_job(path: Path, store: ResumeStore, **kwargs: Any) -> Job:
    return Job(
        path=str(path),
        size=path.stat().st_size,
        endpoint=END,
        dialect=Dialect("tus"),
        settings=Settings(chunk_size=100, checksum="none"),
        store=store,
        clock=time.monotonic,
        rng=random.Random(1),
        **kwargs,
    )


def metadata_of(request: Request) -> dict[str, str]:
    raw = dict(request.headers)["Upload-Metadata"]
    pairs = (item.split(" ") for item in raw.split(","))
    return {k: base64.b64decode(v).decode() for k, v in pairs}


def key_of(path: Path, parallel: int = 1) -> str:
    return fingerprint(path, endpoint=END, protocol="tus", parallel=parallel)


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"x" * 150)
    return path


def test_discovers_digests_uploads_and_forgets(file: Path, tmp_path: Path) -> None:
    store = ResumeStore(tmp_path / "store.json")
    d = Driver(make_job(file, store, metadata={"owner": "ana"}, digest=True).run())
    d.expect("OPTIONS", status(204, tus_extension="creation"))
    assert isinstance(d.step, HashFile)
    d._send("f" * 64)
    post = d.expect("POST", created())
    assert metadata_of(post) == {"owner": "ana", "filename": "photo.jpg", "sha256": "f" * 64}
    entry = store.get(key_of(file))
    assert entry is not None and entry.url == "http://h/files/abc" and entry.sha256 == "f" * 64
    d.expect("PATCH", ok(upload_offset="100"))
    d.expect("PATCH", ok(upload_offset="150"))
    assert d.done and d.result.url == "http://h/files/abc"
    assert store.get(key_of(file)) is None  # finished: forgotten


def test_a_remembered_upload_resumes_without_hashing_again(file: Path, tmp_path: Path) -> None:
    store = ResumeStore(tmp_path / "store.json")
    store.update(key_of(file), url="http://h/files/old", sha256="a" * 64)
    d = Driver(make_job(file, store, capabilities=CAPS, digest=True).run())
    d.expect("HEAD", status(200, upload_offset="120"), body=None)
    d.expect("PATCH", ok(upload_offset="150"), Upload_Offset="120")
    assert d.result.resumed and d.result.sha256 == "a" * 64


def test_an_upload_gone_mid_way_is_forgotten(file: Path, tmp_path: Path) -> None:
    store = ResumeStore(tmp_path / "store.json")
    d = Driver(make_job(file, store, capabilities=CAPS, digest=False).run())
    d.expect("POST", created())
    assert store.get(key_of(file)) is not None
    with pytest.raises(UploadGone):
        d.expect("PATCH", status(410, "expired"))
    assert store.get(key_of(file)) is None


def test_parallel_parts_then_a_final_upload(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"y" * (16 * 1024 * 1024))
    store = ResumeStore(tmp_path / "store.json")
    job = make_job(path, store, capabilities=CAPS, parallel=3, digest=False)
    d = Driver(job.run())
    step = d.step
    assert isinstance(step, Concurrently) and len(step.flows) == 3
    starts = [f.source_start for f in step.flows]
    lengths = [f.length for f in step.flows]
    assert starts == [0, lengths[0], 2 * lengths[0]] and sum(lengths) == 16 * 1024 * 1024
    # Drive each part by hand; each records its URL as it is created.
    urls = []
    for index, flow in enumerate(step.flows):
        part = Driver(flow.run())
        part.expect("POST", created(f"/files/p{index}"), Upload_Concat="partial")
        while not part.done:
            offset = flow.progress.offset + part.step.body.length
            part.expect("PATCH", ok(upload_offset=str(offset)))
        urls.append(part.result)
    entry = store.get(key_of(path, 3))
    assert entry is not None and entry.parts == urls
    d._send(urls)
    final = d.expect("POST", created("/files/final"))
    assert dict(final.headers)["Upload-Concat"] == "final;" + " ".join(urls)
    assert d.result.url == "http://h/files/final" and d.result.parts == tuple(urls)


def test_parallel_needs_concatenation(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"y" * (16 * 1024 * 1024))
    job = make_job(path, NoStore(), capabilities=Capabilities(), parallel=4, digest=False)
    d = Driver(job.run())
    d.expect("POST", created())  # one upload, no Concurrently step


def test_too_large_for_the_server_fails_before_sending(file: Path) -> None:
    caps = Capabilities(max_size=100)
    with pytest.raises(UploadFailed, match="exceed the server's limit") as info:
        Driver(make_job(file, NoStore(), capabilities=caps).run())
    assert info.value.status == 413


# -- the store -----------------------------------------------------------------------------


def test_fingerprint_follows_the_file_and_the_destination(file: Path) -> None:
    first = key_of(file)
    assert key_of(file) == first
    assert fingerprint(file, endpoint="http://other/", protocol="tus", parallel=1) != first
    assert key_of(file, parallel=2) != first
    os.utime(file, ns=(1, 1))
    assert key_of(file) != first


def test_store_survives_garbage_and_drops_old_entries(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text("not json")
    store = ResumeStore(path)
    assert store.get("k") is None
    store.update("k", url="u1")
    store.set_part("p", 2, "u3", 3)
    assert store.get("k").url == "u1"  # type: ignore[union-attr]
    assert store.get("p").parts == [None, None, "u3"]  # type: ignore[union-attr]
    data = json.loads(path.read_text())
    data["k"]["updated"] = 0.0
    path.write_text(json.dumps(data))
    store.forget("p")
    assert store.get("k") is None and store.get("p") is None


def test_parallel_hashes_while_the_parts_go_and_tags_the_final(tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(b"z" * (10 * 1024 * 1024))
    store = ResumeStore(tmp_path / "store.json")
    d = Driver(make_job(path, store, capabilities=CAPS, parallel=2, digest=True).run())
    step = d.step
    assert isinstance(step, Concurrently) and step.digest  # no HashFile step before
    d._send((["http://h/files/p0", "http://h/files/p1"], "d" * 64))
    final = d.expect("POST", created("/files/final"))
    assert metadata_of(final) == {"filename": "big", "sha256": "d" * 64}
    assert d.result.sha256 == "d" * 64
