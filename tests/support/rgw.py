"""A throw-away S3 server for tests: a single-node Ceph RADOS Gateway on loopback.

``Gateway`` builds a whole Ceph cluster under one temporary directory (one monitor, one
OSD on ``memstore``, i.e. in RAM, and one ``radosgw``), all on 127.0.0.1, with an explicit
``--conf`` so nothing under /etc/ceph or /var/lib/ceph is read or written. The daemons run
in the foreground as our children and are stopped by PID (SIGTERM, then SIGKILL after a
bounded wait); they also get SIGKILL if the process that started them dies.

The binaries come from Debian 12's packages (Ceph 16.2 "Pacific")::

    apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw ceph-common

With ``cephfs=True`` the same cluster also serves CephFS (one ``ceph-mds``), which
``Gateway.mount`` mounts with ``ceph-fuse`` clients (``tests/support/cephfs.py``).

``s3_gateway`` is the pytest fixture: started on first use, once per session. With
``TETHER_TEST_S3_ENDPOINT`` (and ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) set it
uses that S3 service instead. Without the binaries it skips, saying how to get them.
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

BASE_BINARIES = ("ceph-mon", "ceph-osd", "monmaptool", "ceph-authtool", "ceph")
RGW_BINARIES = ("radosgw", "radosgw-admin")
CEPHFS_BINARIES = ("ceph-mds", "ceph-fuse")
PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common")
INSTALL_HINT = (
    "apt-get install -y --no-install-recommends " + " ".join(PACKAGES) + " (Debian 12; "
    "scripts/test and scripts/s3 do this when run as root), or point "
    "TETHER_TEST_S3_ENDPOINT, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY at an S3 service"
)
# RGW's default zonegroup accepts any region name in a SigV4 scope; us-east-1 is the one
# for which botocore sends no LocationConstraint, which the "default" zonegroup accepts.
DEFAULT_REGION = "us-east-1"
GiB = 1024**3


class GatewayError(RuntimeError):
    """The gateway could not start (the message ends with the daemons' log tails)."""


def missing_binaries(*, rgw: bool = True, cephfs: bool = False) -> list[str]:
    """The Ceph programs ``Gateway`` needs that are not on PATH."""
    wanted = [*BASE_BINARIES, *(RGW_BINARIES if rgw else ()), *(CEPHFS_BINARIES if cephfs else ())]
    return [name for name in wanted if shutil.which(name) is None]


def _unmount(mountpoint: Path) -> None:
    """Detach a FUSE mount whose client is gone (a killed ceph-fuse leaves it behind).
    Read from the mount table: ``os.path.ismount`` says False for such a dead mount."""
    with open("/proc/self/mounts") as table:
        mounted = any(line.split()[1] == str(mountpoint) for line in table if line.strip())
    if mounted:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def s3_client(
    endpoint: str, region: str, access_key: str, secret_key: str, *, attempts: int = 3
) -> Any:
    """A synchronous botocore S3 client that old RGWs understand; the caller closes it.

    Path-style addressing (no bucket DNS names on loopback) and checksums only when an
    operation requires them: botocore >= 1.36 otherwise adds a CRC32 to every upload. Over
    plain HTTP that is an ``x-amz-checksum-crc32`` header, which Pacific's RGW ignores
    (even a wrong one); with unsigned payloads (HTTPS) it becomes an ``aws-chunked``
    trailer, which Pacific reportedly rejects (not reachable on this HTTP endpoint).
    ``attempts=1`` shows each answer as the server gave it (botocore retries 500s).
    """
    import botocore.session
    from botocore.config import Config

    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": attempts, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
    )
    return botocore.session.Session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


def create_bucket(endpoint: str, region: str, access_key: str, secret_key: str, name: str) -> None:
    client = s3_client(endpoint, region, access_key, secret_key)
    try:
        if region == DEFAULT_REGION:
            client.create_bucket(Bucket=name)
        else:
            client.create_bucket(
                Bucket=name, CreateBucketConfiguration={"LocationConstraint": region}
            )
    finally:
        client.close()


def _deathsig() -> None:
    """In the child before exec: SIGKILL it when the thread that started it dies."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


@dataclass
class Daemon:
    """One Ceph daemon running in the foreground as our child."""

    name: str
    process: subprocess.Popen[bytes]
    output: Path
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout`` seconds."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no file)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


@dataclass
class Gateway:
    """A single-node Ceph cluster serving S3 on ``endpoint`` (and, with ``cephfs=True``,
    CephFS); a context manager.

    ``start()`` returns once radosgw answers S3 requests and an S3 user exists
    (``access_key``/``secret_key``; not with ``rgw=False``) and, with ``cephfs=True``,
    once the metadata server is active; it raises ``GatewayError`` (with log tails) when
    that does not happen within ``timeout`` seconds, and stops whatever it started.
    ``stop()`` ends the mounts, stops the daemons by PID and removes the directory; it is
    idempotent.
    """

    timeout: float = 60.0
    # memstore keeps every object in RAM. This is only the size it reports (so the point
    # where the OSD calls itself full); memory is taken as objects arrive, ~2x their size
    # (512 MiB stored: 1.3 GiB RSS), and given back as RGW's gc deletes them: it starts
    # after ~20 s, and after the churn test's S3 run half of its ~10 GiB peak was still
    # held minutes later. Files deleted from CephFS are given back within seconds.
    memstore_bytes: int = 16 * GiB
    host: str = "127.0.0.1"
    # Which services run on the cluster: the S3 gateway, and CephFS (one metadata server;
    # clients are ceph-fuse mounts from ``mount()``).
    rgw: bool = True
    cephfs: bool = False
    region: str = DEFAULT_REGION
    port: int | None = None  # the S3 port; None picks a free one
    root: Path | None = None
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    daemons: list[Daemon] = field(default_factory=list)
    mounts: list[Path] = field(default_factory=list)
    startup_seconds: float = 0.0
    _own_root: bool = False
    _deadline: float = 0.0

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Gateway:
        missing = missing_binaries(rgw=self.rgw, cephfs=self.cephfs)
        if missing:
            raise GatewayError(f"missing Ceph programs {', '.join(missing)}: {INSTALL_HINT}")
        began = time.monotonic()
        self._deadline = began + self.timeout
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="tether-rgw-"))
            self._own_root = True
        try:
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 15.0) -> None:
        # Reverse order: the clients first (mounts, the gateway), the monitor last.
        while self.daemons:
            self.daemons.pop().stop(timeout)
        while self.mounts:
            _unmount(self.mounts.pop())
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            self._own_root = False

    def create_bucket(self, name: str) -> None:
        create_bucket(self.endpoint, self.region, self.access_key, self.secret_key, name)

    def pids(self) -> list[int]:
        return [daemon.process.pid for daemon in self.daemons]

    def rss_bytes(self) -> int:
        """The daemons' resident memory together (from /proc)."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        return total

    # -- bootstrap ---------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        assert self.root is not None
        return self.root / "ceph.conf"

    def _bootstrap(self) -> None:
        root = self.root
        assert root is not None
        for sub in ("run", "log", "mon/a"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        fsid = str(uuid.uuid4())
        mon_port = free_port(self.host)
        rgw_port = self.port or free_port(self.host)
        self.conf.write_text(self._conf_text(fsid, mon_port, rgw_port))

        keyring = root / "keyring"
        conf = ["--conf", str(self.conf)]
        # The keyring only satisfies mkfs; with auth "none" nobody checks it.
        self._run("ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", "mon.")
        monmap = root / "monmap"
        mon_addr = f"[v2:{self.host}:{mon_port}]"
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", mon_addr, str(monmap))
        mkfs = ["--mkfs", "-i", "a", "--monmap", str(monmap), "--keyring", str(keyring)]
        self._run("ceph-mon", *conf, *mkfs)
        self._spawn("mon.a", "ceph-mon", "-f", "-i", "a")
        self._wait("the monitor to form a quorum", self._mon_ready)

        # The OSD places itself in the CRUSH map when it starts (osd crush update on start),
        # under host=<hostname> root=default; with chooseleaf type 0 the default rule is
        # satisfied by one OSD.
        osd_uuid = str(uuid.uuid4())
        osd_id = self._ceph("osd", "new", osd_uuid).strip()
        (root / "osd" / osd_id).mkdir(parents=True)
        self._run("ceph-osd", *conf, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid)
        self._spawn(f"osd.{osd_id}", "ceph-osd", "-f", "-i", osd_id)
        self._wait("the OSD to come up", self._osd_up)

        if self.rgw:
            self._start_rgw(rgw_port)
        if self.cephfs:
            self._start_mds()

    def _start_rgw(self, rgw_port: int) -> None:
        conf = ["--conf", str(self.conf)]
        # radosgw creates its pools (8 PGs each) itself, the bucket pools on the first bucket.
        self._spawn("client.rgw.a", "radosgw", "-f", "-n", "client.rgw.a")
        self.endpoint = f"http://{self.host}:{rgw_port}"
        self._wait("radosgw to answer S3 requests", lambda: self._rgw_answers(rgw_port))

        user_create = ["user", "create", "--uid", "tether", "--display-name", "tether tests"]
        user = json.loads(self._run("radosgw-admin", *conf, *user_create))
        self.access_key = user["keys"][0]["access_key"]
        self.secret_key = user["keys"][0]["secret_key"]

    def _start_mds(self) -> None:
        assert self.root is not None
        (self.root / "mds" / "a").mkdir(parents=True)
        self._ceph("osd", "pool", "create", "cephfs_metadata", "8")
        self._ceph("osd", "pool", "create", "cephfs_data", "8")
        self._ceph("fs", "new", "cephfs", "cephfs_metadata", "cephfs_data")
        self._spawn("mds.a", "ceph-mds", "-f", "-i", "a")
        self._wait("the metadata server to become active", self._mds_active)

    def mount(self, mountpoint: Path) -> Path:
        """Mount the file system at ``mountpoint`` (created if need be) with a ceph-fuse
        client of its own: its own cache and its own locks, as on another machine. The
        mount ends on ``stop()``."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._deadline = time.monotonic() + self.timeout
        self.mounts.append(mountpoint)
        # A name of its own, for its own log, admin socket and pid file (auth is "none").
        client = f"fuse{len(self.mounts)}"
        name = f"client.{client}"
        self._spawn(name, "ceph-fuse", "-f", "--id", client, str(mountpoint))
        self._wait(f"{name} to mount {mountpoint}", lambda: os.path.ismount(mountpoint))
        return mountpoint

    def _conf_text(self, fsid: str, mon_port: int, rgw_port: int) -> str:
        root = self.root
        return f"""\
[global]
fsid = {fsid}
mon host = [v2:{self.host}:{mon_port}]
public addr = {self.host}
cluster addr = {self.host}
ms bind ipv6 = false
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
# "none" auth has no session key, so it cannot use msgr2's secure mode, the only one
# radosgw allows with monitors by default (it gets -EACCES before even connecting).
ms mon client mode = crc secure
keyring = {root}/keyring
run dir = {root}/run
admin socket = {root}/run/$name.asok
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
mon cluster log file = {root}/log/cluster.log
crash dir = {root}/crash
mon data = {root}/mon/$id
osd data = {root}/osd/$id
mds data = {root}/mds/$id
osd objectstore = memstore
memstore device bytes = {self.memstore_bytes}
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
# Start-up is a chain of monitor proposals: with the default 1 s apart it takes ~13 s,
# with 0.05 s ~2 s (measured here).
paxos propose interval = 0.05
# Never stop the monitor for a nearly full /tmp: this cluster lives for one test run.
mon data avail crit = 0
mon data avail warn = 0

[client.rgw.a]
rgw frontends = beast endpoint={self.host}:{rgw_port}
rgw thread pool size = 64
rgw dynamic resharding = false
# No lifecycle rules here; its thread sleeps in 5 s steps and so delays every SIGTERM.
rgw enable lc threads = false
# Deleted parts and overwritten objects are really freed within ~20 s (RAM).
rgw gc obj min wait = 10
rgw gc processor period = 10
"""

    # -- helpers -----------------------------------------------------------------------

    def _remaining(self) -> float:
        return max(0.5, self._deadline - time.monotonic())

    def _run(self, *argv: str) -> str:
        try:
            done = subprocess.run(
                argv,
                capture_output=True,
                timeout=self._remaining(),
                cwd=self.root,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise self._error(f"{' '.join(argv)} timed out") from exc
        if done.returncode != 0:
            raise self._error(
                f"{' '.join(argv)} exited {done.returncode}:\n"
                + done.stdout.decode(errors="replace")
                + done.stderr.decode(errors="replace")
            )
        return done.stdout.decode()

    def _ceph(self, *args: str) -> str:
        connect = str(max(1, int(min(10.0, self._remaining()))))
        return self._run("ceph", "--conf", str(self.conf), "--connect-timeout", connect, *args)

    def _spawn(self, name: str, *argv: str) -> None:
        assert self.root is not None
        output = self.root / "log" / f"{name}.out"
        with open(output, "wb") as out:
            process = subprocess.Popen(
                [*argv, "--conf", str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # Ctrl-C in scripts/s3's terminal reaches us only
                preexec_fn=_deathsig,  # the daemons must not outlive us
            )
        self.daemons.append(Daemon(name, process, output, self.root / "log" / f"{name}.log"))

    def _wait(self, what: str, ready: Callable[[], bool]) -> None:
        while True:
            for daemon in self.daemons:
                if not daemon.alive():
                    raise self._error(
                        f"{daemon.name} exited ({daemon.process.returncode}) while waiting "
                        f"for {what}"
                    )
            if ready():
                return
            if time.monotonic() >= self._deadline:
                raise self._error(f"timed out after {self.timeout:.0f} s waiting for {what}")
            time.sleep(0.1)

    def _mon_ready(self) -> bool:
        try:
            status = json.loads(self._ceph("quorum_status", "--format", "json"))
        except (GatewayError, ValueError):
            return False
        return bool(status.get("quorum"))

    def _osd_up(self) -> bool:
        try:
            status = json.loads(self._ceph("osd", "stat", "--format", "json"))
        except (GatewayError, ValueError):
            return False
        # Pacific prints {"epoch":..,"num_osds":1,"num_up_osds":1,..}
        return int(status.get("num_up_osds", 0)) >= 1

    def _mds_active(self) -> bool:
        try:
            dump = json.loads(self._ceph("fs", "dump", "--format", "json"))
        except (GatewayError, ValueError):
            return False
        return any(
            info.get("state") == "up:active"
            for fs in dump.get("filesystems", [])
            for info in fs.get("mdsmap", {}).get("info", {}).values()
        )

    def _rgw_answers(self, port: int) -> bool:
        """True once an HTTP answer carries RGW's request id (not just an open port)."""
        conn = http.client.HTTPConnection(self.host, port, timeout=2)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            request_id = response.getheader("x-amz-request-id") or ""
        except OSError:
            return False
        finally:
            conn.close()
        return request_id.startswith("tx")

    def log_tails(self) -> str:
        """The end of each daemon's log and console output."""
        parts = []
        for daemon in self.daemons:
            parts.append(f"--- {daemon.log} (tail)\n{_tail(daemon.log)}")
            parts.append(f"--- {daemon.output} (tail)\n{_tail(daemon.output, 10)}")
        return "\n".join(parts)

    def _error(self, message: str) -> GatewayError:
        where = f"(cluster directory {self.root}, removed on stop)"
        return GatewayError(f"{message}\n{where}\n{self.log_tails()}")


# -- pytest fixture ----------------------------------------------------------------------


@dataclass
class S3Service:
    """What tests get from ``s3_gateway``: an S3 endpoint and one user's keys.

    ``local`` is True when this session started the endpoint (Ceph 16 RGW, whose quirks
    tests/e2e/test_rgw_gateway.py pins down), False for ``TETHER_TEST_S3_ENDPOINT``.
    """

    endpoint: str
    region: str
    access_key: str
    secret_key: str
    local: bool = False
    startup_seconds: float = 0.0
    _names: Iterator[int] = field(default_factory=itertools.count, repr=False)

    @property
    def env(self) -> dict[str, str]:
        """AWS_* variables for subprocesses (merge them into a copy of ``os.environ``)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def new_bucket(self) -> str:
        """Create a bucket with a name no other test (or earlier run) uses; return it."""
        name = f"tether-{next(self._names)}-{uuid.uuid4().hex[:12]}"
        create_bucket(self.endpoint, self.region, self.access_key, self.secret_key, name)
        return name

    def url(self, bucket: str, prefix: str = "") -> str:
        """A ``--storage`` URL: ``s3://BUCKET/PREFIX?endpoint=ENDPOINT&region=REGION``."""
        return f"s3://{bucket}/{prefix}?endpoint={self.endpoint}&region={self.region}"

    def client(self, *, attempts: int = 3) -> Any:
        """A synchronous botocore S3 client for this service; the caller closes it."""
        return s3_client(
            self.endpoint, self.region, self.access_key, self.secret_key, attempts=attempts
        )


def _external_service() -> S3Service:
    endpoint = os.environ["TETHER_TEST_S3_ENDPOINT"].rstrip("/")
    access_key = os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access_key or not secret_key:
        pytest.fail(
            "TETHER_TEST_S3_ENDPOINT is set but AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY is not",
            pytrace=False,
        )
    region = (
        os.environ.get("TETHER_TEST_S3_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or os.environ.get("AWS_REGION")
        or DEFAULT_REGION
    )
    return S3Service(endpoint, region, access_key, secret_key)


@pytest.fixture(scope="session")
def s3_gateway() -> Iterator[S3Service]:
    """An S3 service for the session: a fresh local RGW, or ``TETHER_TEST_S3_ENDPOINT``.

    Started on first use and stopped at the end of the session. Sets AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION in ``os.environ`` for the session (and,
    for the local RGW, removes AWS_SESSION_TOKEN and AWS_PROFILE, which would spoil its
    keys); ``os.environ`` is restored at teardown. Skips, saying how to install them,
    when the Ceph programs are missing; fails when they are there but do not start.
    """
    with pytest.MonkeyPatch.context() as env, contextlib.ExitStack() as stack:
        if os.environ.get("TETHER_TEST_S3_ENDPOINT"):
            service = _external_service()
        else:
            missing = missing_binaries()
            if missing:
                pytest.skip(f"no local S3 gateway: {', '.join(missing)} not found; {INSTALL_HINT}")
            gateway = stack.enter_context(Gateway())
            service = S3Service(
                gateway.endpoint,
                gateway.region,
                gateway.access_key,
                gateway.secret_key,
                local=True,
                startup_seconds=gateway.startup_seconds,
            )
            for name in ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE"):
                env.delenv(name, raising=False)
        for name, value in service.env.items():
            env.setenv(name, value)
        yield service
