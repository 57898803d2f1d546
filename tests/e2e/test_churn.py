"""The churn test: three ``tether serve`` nodes share one state store (PostgreSQL or Redis)
and one byte store (a directory, or an S3 bucket on a local Ceph RGW), while several
clients upload at once and every chunk goes to a randomly chosen node, often from another
source address, sometimes racing a stalled request of its own (a concurrent takeover), and
one node is killed with SIGKILL and later restarted on the same port. Every upload must
finish byte-for-byte, and no offset a server acknowledged may ever go back.

Knobs (environment): ``TETHER_CHURN_UPLOADS`` (how many uploads; the issue's full figure is
200), ``TETHER_CHURN_SEED``, ``TETHER_CHURN_TIMEOUT`` (seconds for the whole run).
``pytest -s`` shows the summary; a failure carries it in its message.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import random
import secrets
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import churn
from tests.support.cephfs import SharedFS
from tests.support.churn import MiB, Source
from tests.support.rgw import S3Service
from tests.support.server import ServerProcess
from tests.support.stores import fresh_state

pytestmark = pytest.mark.e2e

# 200 (the figure: ~5.2 GiB) takes ~30 s per backend on a 2-core machine.
UPLOADS = int(os.environ.get("TETHER_CHURN_UPLOADS") or 200)
SEED = int(os.environ.get("TETHER_CHURN_SEED") or 20240611)
TIMEOUT = float(os.environ.get("TETHER_CHURN_TIMEOUT") or 240)
WORKERS = 6
MAX_UPLOAD = 64 * MiB
MIN_CHUNK, MAX_CHUNK = 64 * 1024, 8 * MiB
TAKEOVER_RATE = 0.15
ADDRESS_CHANGE_RATE = 0.4
CLIENT_ADDRESSES = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")
MAX_FAILURES = 40  # consecutive failed requests of one upload before it is given up
NODES = 3
# A stalled request commits what it received after this much silence; the takeovers stall
# 0.05-0.3 s, so some find those bytes committed and some fence them off uncommitted.
QUIET_COMMIT = "0.2"


# -- byte stores ---------------------------------------------------------------------------


@dataclass
class Bytes:
    """The nodes' shared byte store, and how the test reads an upload's bytes back."""

    kind: str  # for the summary: "file", "cephfs" or "s3"
    urls: list[str]  # each node's --storage URL for it
    sha256: Callable[[str], str]  # upload id -> sha256 of its stored bytes, or "missing"
    leftovers: Callable[[str], int]  # upload id -> pieces other than the final object
    cleanup: Callable[[], None]


def shared_directory(roots: list[Path], kind: str = "file") -> Bytes:
    """One directory, seen by node i at ``roots[i]`` (the same path for every node, or
    the node's own mount of a shared file system); the test reads it at ``roots[0]``."""
    root = roots[0]

    def sha256(upload_id: str) -> str:
        stored = root / upload_id / "data"
        return churn.file_sha256(stored) if stored.exists() else "missing"

    def leftovers(upload_id: str) -> int:
        return len(list((root / upload_id).glob("*.seg")))

    urls = [f"file://{path}" for path in roots]
    return Bytes(kind, urls, sha256, leftovers, lambda: shutil.rmtree(root, True))


def cephfs_directory(fs: SharedFS) -> Bytes:
    """A fresh directory of CephFS, each node on its own ceph-fuse mount of it."""
    name = f"churn-{secrets.token_hex(6)}"
    return shared_directory([mount / name for mount in fs.mounts[:NODES]], "cephfs")


def s3_bucket(s3: S3Service) -> Bytes:
    bucket, prefix = s3.new_bucket(), "churn/"
    client = s3.client()

    def sha256(upload_id: str) -> str:
        try:
            body = client.get_object(Bucket=bucket, Key=prefix + upload_id)["Body"]
        except client.exceptions.NoSuchKey:
            return "missing"
        digest = hashlib.sha256()
        with contextlib.closing(body):
            for chunk in body.iter_chunks(MiB):
                digest.update(chunk)
        return digest.hexdigest()

    def leftovers(upload_id: str) -> int:
        area = f"{prefix}segments/{upload_id}/"
        objects = client.list_objects_v2(Bucket=bucket, Prefix=area).get("Contents", [])
        return len(objects) + sum(
            len(client.list_multipart_uploads(Bucket=bucket, Prefix=p).get("Uploads", []))
            for p in (area, prefix + upload_id)
        )

    def cleanup() -> None:
        # The gateway keeps objects in RAM: give it back for the tests after this one.
        with contextlib.closing(client):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys})

    return Bytes("s3", [s3.url(bucket, prefix.rstrip("/"))] * NODES, sha256, leftovers, cleanup)


# PostgreSQL and Redis state on a shared directory, PostgreSQL state on CephFS with each
# node on its own mount (its own client, as on its own machine), and PostgreSQL state on
# S3. CephFS before S3: each holds ~11 GiB in RAM at its peak, and CephFS gives it back
# within seconds of the clean-up, while the gateway's garbage collection takes minutes.
SETUPS = [("postgresql", "file"), ("redis", "file"), ("postgresql", "cephfs"), ("postgresql", "s3")]


@pytest.fixture(params=SETUPS, ids=[f"{a}-{b}" for a, b in SETUPS])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Bytes]]:
    state, storage = request.param
    if storage == "s3":
        request.applymarker(pytest.mark.s3)
        shared = s3_bucket(request.getfixturevalue("s3_gateway"))
    elif storage == "cephfs":
        request.applymarker(pytest.mark.cephfs)
        shared = cephfs_directory(request.getfixturevalue("cephfs"))
    else:
        shared = shared_directory([tmp_path / "bytes"] * NODES)
    with fresh_state(state, "churn") as state_url:
        yield state_url, shared


# -- the cluster ---------------------------------------------------------------------------


class Cluster:
    """Three nodes, and the clients' view of which are up (it lags a kill on purpose, so
    some requests meet a dead port)."""

    def __init__(self, root: Path, state_url: str, storage_urls: list[str]) -> None:
        self.procs = [
            ServerProcess(
                root / f"n{i + 1}",
                node_id=f"n{i + 1}",
                state_url=state_url,
                storage_url=storage_urls[i],
                extra_args=("--quiet-commit", QUIET_COMMIT),
            )
            for i in range(NODES)
        ]
        self.up = [False] * NODES
        self.lock = threading.Lock()

    def start(self) -> None:
        for i, proc in enumerate(self.procs):
            proc.start()
            self.up[i] = True

    def live(self) -> list[int]:
        with self.lock:
            return [i for i in range(NODES) if self.up[i]]

    def pick(self, rng: random.Random, exclude: int | None = None) -> int:
        live = self.live()
        others = [i for i in live if i != exclude]
        return rng.choice(others or live)

    def base(self, node: int) -> str:
        return self.procs[node].url

    def kill(self, node: int) -> None:
        self.procs[node].kill()

    def mark(self, node: int, up: bool) -> None:
        with self.lock:
            self.up[node] = up

    def restart(self, node: int) -> None:
        old = self.procs[node]
        self.procs[node] = ServerProcess(
            old.data_dir,
            node_id=old.node_id,
            port=old.port,
            state_url=old.state_url,
            storage_url=old.storage_url,
            extra_args=old.extra_args,
        ).start()
        self.mark(node, True)

    def logs(self) -> list[str]:
        # A restarted node appends to the same log file (same directory, same port).
        return [proc.log() for proc in self.procs]

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.stop(timeout=10)


# -- the clients ---------------------------------------------------------------------------


@dataclass
class Upload:
    index: int
    seed: int
    size: int
    id: str | None = None
    digest: str = ""
    done: bool = False
    error: str | None = None
    # Every offset a server acknowledged, in time order: (monotonic time, "HEAD"/"PATCH",
    # node index, offset).
    acks: list[tuple[float, str, int, int]] = field(default_factory=list)
    last_node: int | None = None
    last_address: str | None = None
    patches: int = 0
    node_switches: int = 0
    address_switches: int = 0
    takeovers: int = 0
    takeovers_past_start: int = 0  # the stalled request had committed some of its bytes
    resumes: int = 0


class Failed(Exception):
    pass


class Run:
    def __init__(self, cluster: Cluster, uploads: list[Upload], deadline: float) -> None:
        self.cluster = cluster
        self.uploads = uploads
        self.deadline = deadline
        self.statuses: Counter[str] = Counter()
        self.anomalies: list[str] = []
        self.events: list[tuple[float, str, int]] = []  # (time, "kill"/"restart", node)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.acked = [0] * len(uploads)
        self.restarted_at: float | None = None  # wall clock, as in the servers' logs

    # bookkeeping

    def count(self, what: str) -> None:
        with self.lock:
            self.statuses[what] += 1

    def anomaly(self, text: str) -> None:
        with self.lock:
            self.anomalies.append(text)

    def ack(self, upload: Upload, kind: str, node: int, offset: int) -> None:
        upload.acks.append((time.monotonic(), kind, node, offset))
        self.acked[upload.index] = max(self.acked[upload.index], offset)

    def check_time(self) -> None:
        if self.stop.is_set() or time.monotonic() > self.deadline:
            raise Failed("out of time")

    def note_patch(self, upload: Upload, node: int, address: str) -> None:
        if upload.patches:
            upload.node_switches += node != upload.last_node
            upload.address_switches += address != upload.last_address
        upload.patches += 1
        upload.last_node, upload.last_address = node, address

    def url(self, node: int, upload: Upload) -> str:
        assert upload.id is not None
        return self.cluster.base(node) + upload.id

    # requests

    def create(self, upload: Upload, rng: random.Random) -> None:
        failures = 0
        while True:
            self.check_time()
            node = self.cluster.pick(rng)
            try:
                response = churn.simple(
                    "POST",
                    self.cluster.base(node),
                    {"Upload-Length": str(upload.size)},
                    client=rng.choice(CLIENT_ADDRESSES),
                )
                self.count(f"POST {response.status}")
                if response.status == 201:
                    upload.id = response.headers["location"].rsplit("/", 1)[1]
                    return
            except OSError as exc:
                self.count(f"POST {type(exc).__name__}")
            failures += 1
            if failures > MAX_FAILURES:
                raise Failed("could not create the upload")
            time.sleep(min(1.0, 0.05 * failures))

    def head(self, upload: Upload, node: int, address: str, *, strict: bool = False) -> int | None:
        """The server's offset, or None if this request failed (a retryable failure)."""
        try:
            response = churn.simple("HEAD", self.url(node, upload), client=address)
        except OSError as exc:
            self.count(f"HEAD {type(exc).__name__}")
            return None
        self.count(f"HEAD {response.status}")
        if response.status == 200:
            offset = int(response.headers["upload-offset"])
            self.ack(upload, "HEAD", node, offset)
            return offset
        if response.status in (404, 410):
            raise Failed(f"HEAD on n{node + 1} answered {response.status}: the upload is gone")
        return None

    def resume(self, upload: Upload, rng: random.Random) -> int:
        """What a tus client does after any failure: HEAD on any live node, until one
        answers, and go on from there."""
        upload.resumes += 1
        for attempt in range(MAX_FAILURES):
            self.check_time()
            offset = self.head(upload, self.cluster.pick(rng), rng.choice(CLIENT_ADDRESSES))
            if offset is not None:
                return offset
            time.sleep(min(0.5, 0.02 * (attempt + 1)))
        raise Failed("no node answered HEAD")

    def patch(
        self, upload: Upload, src: Source, node: int, address: str, start: int, end: int
    ) -> int | None:
        """PATCH ``start:end`` on ``node``; the new offset, or None after any failure."""
        self.note_patch(upload, node, address)
        try:
            response = churn.patch_range(self.url(node, upload), src, start, end, client=address)
        except OSError as exc:
            self.count(f"PATCH {type(exc).__name__}")
            return None
        self.count(f"PATCH {response.status}")
        if response.status != 204:
            if response.status >= 500 and response.status != 503:
                self.anomaly(
                    f"upload {upload.id} PATCH {start}-{end} on n{node + 1}: "
                    f"{response.status} {response.body[:200]!r}"
                )
            return None
        offset = int(response.headers["upload-offset"])
        self.ack(upload, "PATCH", node, offset)
        if offset != end:
            self.anomaly(f"upload {upload.id}: 204 for {start}-{end} says offset {offset}")
        return offset

    def takeover(
        self, upload: Upload, src: Source, rng: random.Random, node: int, start: int, end: int
    ) -> int | None:
        """A PATCH on ``node`` streams part of its body and stalls, holding its socket; then
        the client, on another node and address, asks HEAD and PATCHes from that offset.
        The stalled socket is closed only afterwards."""
        upload.takeovers += 1
        address = rng.choice(CLIENT_ADDRESSES)
        length = end - start
        sent = rng.randint(length // 4, length - 1)
        self.note_patch(upload, node, address)
        try:
            stalled = churn.start_stalled_patch(
                self.url(node, upload), src, start, end, sent, client=address
            )
        except OSError as exc:  # a dead node: an ordinary failure, the client resumes
            self.count(f"PATCH {type(exc).__name__}")
            return None
        self.count("PATCH stalled")
        try:
            time.sleep(rng.uniform(0.05, 0.3))  # let the server take some of it
            other = self.cluster.pick(rng, exclude=node)
            other_address = rng.choice([a for a in CLIENT_ADDRESSES if a != address])
            at = self.head(upload, other, other_address)
            if at is None:
                return None
            upload.takeovers_past_start += at > start
            if at >= end:
                self.anomaly(f"upload {upload.id}: HEAD {at} past a stalled chunk's end {end}")
                return at
            return self.patch(upload, src, other, other_address, at, end)
        finally:
            stalled.close()

    def verify_download(self, upload: Upload, rng: random.Random) -> None:
        for attempt in range(10):
            node = self.cluster.pick(rng)
            try:
                status, length, digest = churn.get_sha256(self.url(node, upload))
            except OSError as exc:
                self.count(f"GET {type(exc).__name__}")
                time.sleep(0.1 * (attempt + 1))
                continue
            self.count(f"GET {status}")
            if status == 200:
                if (length, digest) != (upload.size, upload.digest):
                    raise Failed(
                        f"GET on n{node + 1}: {length} bytes sha256 {digest}, "
                        f"expected {upload.size} bytes sha256 {upload.digest}"
                    )
                return
            time.sleep(0.1 * (attempt + 1))
        raise Failed("no node served the finished upload")

    def run_upload(self, upload: Upload) -> None:
        rng = random.Random(upload.seed ^ 0xC0FFEE)
        src = Source(upload.seed, upload.size)
        upload.digest = src.sha256()
        self.create(upload, rng)
        offset, failures = 0, 0
        address = rng.choice(CLIENT_ADDRESSES)
        while offset < upload.size:
            self.check_time()
            end = min(upload.size, offset + rng.randint(MIN_CHUNK, MAX_CHUNK))
            node = self.cluster.pick(rng)
            if rng.random() < ADDRESS_CHANGE_RATE:
                address = rng.choice(CLIENT_ADDRESSES)
            if (
                rng.random() < TAKEOVER_RATE
                and end - offset >= MIN_CHUNK
                and len(self.cluster.live()) > 1
            ):
                result = self.takeover(upload, src, rng, node, offset, end)
            else:
                result = self.patch(upload, src, node, address, offset, end)
            if result is not None:
                offset, failures = result, 0
                continue
            failures += 1
            if failures > MAX_FAILURES:
                raise Failed(f"{failures} failures in a row at offset {offset}")
            time.sleep(min(0.5, 0.01 * failures))
            offset = self.resume(upload, rng)
        self.verify_download(upload, rng)
        upload.done = True

    def worker(self, work: queue.Queue[Upload]) -> None:
        churn.work_through(work, self.stop, self.run_upload)

    # the node killer

    def progress(self) -> float:
        total = sum(u.size for u in self.uploads) or 1
        return sum(self.acked) / total

    def finished(self) -> bool:
        return all(u.done or u.error for u in self.uploads)

    def wait_for(self, fraction: float, at_least: float) -> None:
        started = time.monotonic()
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            if self.finished():
                return
            if self.progress() >= fraction and time.monotonic() - started >= at_least:
                return
            time.sleep(0.05)

    def chaos(self, victim: int) -> None:
        """SIGKILL one node a quarter of the way in; restart it on its port later."""
        self.wait_for(0.25, 0.0)
        if self.stop.is_set():
            return
        self.cluster.kill(victim)
        with self.lock:
            self.events.append((time.monotonic(), "kill", victim))
        time.sleep(0.3)  # the clients' view lags: some requests meet the dead port
        self.cluster.mark(victim, False)
        self.wait_for(0.6, 2.0)
        if self.stop.is_set():
            return
        self.cluster.restart(victim)
        with self.lock:
            self.events.append((time.monotonic(), "restart", victim))
            self.restarted_at = time.time()


def plan(count: int, seed: int) -> list[Upload]:
    rng = random.Random(seed)
    sizes = [0, MAX_UPLOAD, 1][:count]
    while len(sizes) < count:
        if rng.random() < 0.15:
            sizes.append(rng.randint(0, 256 * 1024))  # small ones: single-chunk edge cases
        else:
            sizes.append(rng.randint(0, MAX_UPLOAD))
    rng.shuffle(sizes)
    return [Upload(i, rng.getrandbits(48), size) for i, size in enumerate(sizes)]


# -- the invariants ------------------------------------------------------------------------


def offsets_going_back(upload: Upload) -> list[str]:
    problems = []
    best = -1
    for stamp, kind, node, offset in upload.acks:
        if offset < best:
            problems.append(
                f"upload {upload.id}: {kind} on n{node + 1} at t={stamp:.3f} acknowledged "
                f"{offset} after {best} had been acknowledged"
            )
        best = max(best, offset)
    return problems


def heads_after_kill(upload: Upload, since: float) -> tuple[int, list[str]]:
    """Each HEAD after the kill must be >= everything acknowledged before it."""
    checked, problems, best = 0, [], -1
    for stamp, kind, node, offset in upload.acks:
        if kind == "HEAD" and stamp > since:
            checked += 1
            if offset < best:
                problems.append(
                    f"upload {upload.id}: HEAD on n{node + 1} after the kill says {offset}, "
                    f"but {best} was acknowledged before"
                )
        best = max(best, offset)
    return checked, problems


def test_churn(stores: tuple[str, Bytes], tmp_path: Path) -> None:
    state_url, shared = stores
    backend = f"{state_url.split(':', 1)[0]}+{shared.kind}"
    started = time.monotonic()
    cluster = Cluster(tmp_path, state_url, shared.urls)
    uploads = plan(UPLOADS, SEED)
    run = Run(cluster, uploads, started + TIMEOUT)
    threads: list[threading.Thread] = []
    passed = False
    print(
        f"\nchurn[{backend}]: {UPLOADS} uploads (TETHER_CHURN_UPLOADS), seed {SEED}, "
        f"{sum(u.size for u in uploads) / MiB:.1f} MiB, {WORKERS} clients, {NODES} nodes",
        flush=True,
    )
    try:
        cluster.start()
        work: queue.Queue[Upload] = queue.Queue()
        for upload in uploads:
            work.put(upload)
        victim = random.Random(SEED).randrange(NODES)
        threads = [
            threading.Thread(target=run.worker, args=(work,), daemon=True, name=f"client{i}")
            for i in range(WORKERS)
        ]
        threads.append(
            threading.Thread(target=run.chaos, args=(victim,), daemon=True, name="chaos")
        )
        for thread in threads:
            thread.start()
        # Requests time out within 30 s, so a thread still running 30 s past the deadline
        # is stuck.
        hard_deadline = run.deadline + 30
        for thread in threads:
            thread.join(max(0.0, hard_deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        run.stop.set()
        upload_time = time.monotonic() - started
        if not stuck and run.events and run.events[-1][1] == "kill":
            # Everything finished while the node was down: bring it back for the checks.
            cluster.restart(run.events[-1][2])
            run.events.append((time.monotonic(), "restart", run.events[-1][2]))
            run.restarted_at = time.time()

        # -- checks after the run -------------------------------------------------------
        problems: list[str] = [f"threads still running: {stuck}"] if stuck else []
        problems += [
            f"upload {u.index} ({u.id}, {u.size} B): {u.error}" for u in uploads if u.error
        ]
        problems += [f"upload {u.index} did not finish" for u in uploads if not u.done]
        problems += run.anomalies
        kill_time = next((t for t, what, _ in run.events if what == "kill"), None)
        heads_checked = 0
        for upload in uploads:
            problems += offsets_going_back(upload)
            if kill_time is not None:
                checked, found = heads_after_kill(upload, kill_time)
                heads_checked += checked
                problems += found
        disk_checked = 0
        leftover_segments = 0
        for upload in uploads:
            if not upload.done or upload.id is None:
                continue
            for node in cluster.live():
                response = churn.simple("HEAD", run.url(node, upload))
                if response.headers.get("upload-offset") != str(upload.size):
                    problems.append(
                        f"upload {upload.id}: HEAD on n{node + 1} after the run: "
                        f"{response.status} {response.headers}"
                    )
            digest = shared.sha256(upload.id)
            if digest != upload.digest:
                problems.append(f"upload {upload.id}: stored sha256 {digest} != source")
            disk_checked += 1
            leftover_segments += shared.leftovers(upload.id)

        logs = cluster.logs()
        from_logs = churn.switch_totals(logs)
        errors = [e for e in churn.log_entries(logs) if e.get("level") in ("error", "critical")]
        restarted_at = run.restarted_at or float("inf")
        victim_patches = sum(
            1
            for e in churn.log_entries([cluster.procs[victim].log()])
            if str(e.get("msg", "")).startswith("PATCH ")
            and float(str(e.get("ts", 0))) >= restarted_at
        )
        server_statuses = Counter(
            f"{str(e['msg']).split(' ', 1)[0]} {e['status']}"
            for e in churn.log_entries(logs)
            if e.get("logger") == "tether.request" and "status" in e
        )
        total = sum(u.size for u in uploads)
        summary = {
            "backend": backend,
            "uploads": len(uploads),
            "finished": sum(u.done for u in uploads),
            "bytes": total,
            "MiB": round(total / MiB, 1),
            "patches": sum(u.patches for u in uploads),
            "node_switches": sum(u.node_switches for u in uploads),
            "address_switches": sum(u.address_switches for u in uploads),
            "takeovers": sum(u.takeovers for u in uploads),
            "takeovers_past_start": sum(u.takeovers_past_start for u in uploads),
            "resumes": sum(u.resumes for u in uploads),
            "kills": sum(1 for _, what, _ in run.events if what == "kill"),
            "restarts": sum(1 for _, what, _ in run.events if what == "restart"),
            "victim": f"n{victim + 1}",
            "victim_patches_after_restart": victim_patches,
            "acks": sum(len(u.acks) for u in uploads),
            "heads_checked_after_kill": heads_checked,
            "files_checked_in_store": disk_checked,
            "leftover_segments": leftover_segments,
            "server_log_node_switches": from_logs["node_switches"],
            "server_log_client_switches": from_logs["client_switches"],
            "server_log_append_lines": from_logs["append_lines"],
            "server_error_lines": len(errors),
            "client_statuses": dict(sorted(run.statuses.items())),
            "server_statuses": dict(sorted(server_statuses.items())),
            "upload_seconds": round(upload_time, 1),
            "total_seconds": round(time.monotonic() - started, 1),
        }
        report = "\n".join(f"  {key}: {value}" for key, value in summary.items())
        print(f"churn[{backend}] summary:\n{report}", flush=True)
        for entry in errors[:10]:
            print(f"  server error: {entry}", flush=True)
        assert summary["kills"] == 1 and summary["restarts"] == 1, report
        # Takeovers met committed progress of the request they fenced (quiet commits; on
        # S3, whole parts), not only requests that had committed nothing.
        assert summary["takeovers_past_start"] > 0, report
        assert not problems, "\n".join([*problems[:30], "summary:", report])
        passed = True
    finally:
        run.stop.set()
        cluster.stop()
        for thread in threads:
            thread.join(5)
    # Gigabytes: pytest keeps the last runs' tmp_path; keep the bytes only of a failure.
    if passed:
        shared.cleanup()
