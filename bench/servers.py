"""The servers under test: how to start each one and where it keeps uploaded bytes.

Every server is started fresh per timed run, pinned to CPU 0 with
``taskset -c 0``, in its own session so that any worker processes it
forks can be stopped with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
PEER = BENCH / "peer"
VENV_PY = REPO / ".venv" / "bin" / "python"
TETHER_BIN = REPO / ".venv" / "bin" / "tether"
SERVER_CPU = "0"
CLIENT_CPU = "1"

# Where tether serves tus creation; change here (or --tether-path) if it moves.
TETHER_PATH = "/files/"


def tether_command(
    port: int,
    data_dir: Path,
    durability: str | None,
    *,
    state: str | None = None,
    node_id: str | None = None,
) -> list[str]:
    """The tether command line. Edit this while `tether serve` settles its flags.

    ``--tether-cmd`` on run.py overrides it without editing code. ``state`` replaces the
    default SQLite file in ``data_dir`` (cluster.py passes a PostgreSQL or Redis URL, so
    that several nodes sharing ``data_dir`` share their state too).
    """
    cmd = [
        str(TETHER_BIN),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--state",
        state or f"sqlite:///{data_dir}/state.db",
        "--storage",
        f"file://{data_dir}/uploads",
        # The other servers log nothing per request; keep the comparison fair.
        "--no-access-log",
    ]
    if node_id:
        cmd += ["--node-id", node_id]
    if durability:
        cmd += ["--durability", durability]
    return cmd


def tether_template_command(
    template: str, port: int, data_dir: Path, durability: str | None
) -> list[str]:
    """``--tether-cmd`` form: a shell-quoted template with {port} and {dir} placeholders."""
    cmd = [part.format(port=port, dir=data_dir) for part in shlex.split(template)]
    if durability:
        cmd += ["--durability", durability]
    return cmd


def pinned(cpu: str, nice: int) -> list[str]:
    """Command prefix running a program on one core at a given niceness.

    A negative niceness (root only; otherwise nice warns and carries on)
    makes the kernel favour the benchmark over whatever else runs on a
    shared machine, which removes most of the run-to-run noise. Both nice
    and taskset exec their argument, so the PID stays the program's own.
    """
    prefix = ["taskset", "-c", cpu]
    return ["nice", "-n", str(nice), *prefix] if nice else prefix


def python_for_servers() -> str:
    # The bare app needs uvicorn/uvloop/httptools, which live in the venv.
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


CommandFn = Callable[[int, Path], list[str]]
LocateFn = Callable[[str, Path], Path | None]


@dataclass(frozen=True)
class ServerSpec:
    """One server variant as it appears in the results table."""

    name: str
    kind: str  # "tether", "tus-node" or "bare": decides ratios and verification
    base_path: str
    command: CommandFn
    # Path of the stored bytes for an upload URL, or None to fetch them with GET.
    locate: LocateFn
    env: dict[str, str] = field(default_factory=dict)

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name)


def _last_segment(url: str, data_dir: Path) -> Path:
    return data_dir / urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]


def _via_get(url: str, data_dir: Path) -> Path | None:
    return None


def bare_spec() -> ServerSpec:
    def command(port: int, data_dir: Path) -> list[str]:
        return [
            python_for_servers(),
            str(BENCH / "bare_app.py"),
            "--port",
            str(port),
            "--data",
            str(data_dir),
        ]

    return ServerSpec("bare", "bare", "/files/", command, _last_segment)


def tus_node_spec() -> ServerSpec:
    def command(port: int, data_dir: Path) -> list[str]:
        return ["node", str(PEER / "server.mjs"), str(port), str(data_dir)]

    # @tus/file-store keeps upload <id> as DIR/<id> (metadata in DIR/<id>.json).
    return ServerSpec("tus-node", "tus-node", "/files/", command, _last_segment)


def tether_spec(durability: str | None, template: str | None, base_path: str) -> ServerSpec:
    def command(port: int, data_dir: Path) -> list[str]:
        if template:
            return tether_template_command(template, port, data_dir, durability)
        return tether_command(port, data_dir, durability)

    name = f"tether[{durability}]" if durability else "tether"
    return ServerSpec(name, "tether", base_path, command, _via_get)


def tether_missing(template: str | None) -> str | None:
    """Why tether cannot run here, or None if it can."""
    exe = shlex.split(template)[0] if template else str(TETHER_BIN)
    found = Path(exe).exists() if os.sep in exe else shutil.which(exe) is not None
    if not found:
        return f"{exe} not found (install tether into the venv: .venv/bin/pip install -e .)"
    return None


def ensure_peer_installed() -> str | None:
    """Install tus-node-server from the lockfile if needed; return why it cannot run, or None."""
    if shutil.which("node") is None:
        return "node is not on PATH"
    if (PEER / "node_modules" / "@tus" / "server" / "package.json").exists():
        return None
    if shutil.which("npm") is None:
        return "npm is not on PATH and bench/peer/node_modules is missing"
    print("installing tus-node-server: npm ci --prefix bench/peer", flush=True)
    done = subprocess.run(
        ["npm", "ci", "--prefix", str(PEER), "--no-audit", "--no-fund"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"npm ci failed:\n{done.stdout}{done.stderr}"
    return None


def free_port() -> int:
    # Bind-to-0 then close: the kernel hands out an unused loopback port. The
    # tiny reuse race is acceptable on a machine running nothing else.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerFailed(RuntimeError):
    """The server did not come up (or died); the message carries its log tail."""


class RunningServer:
    """One started server process; always call ``stop()`` (run.py does, in finally)."""

    def __init__(
        self,
        spec: ServerSpec,
        port: int,
        data_dir: Path,
        log_path: Path,
        nice: int = 0,
        cpu: str = SERVER_CPU,
    ) -> None:
        self.spec = spec
        self.nice = nice
        self.cpu = cpu
        self.port = port
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.spec.base_path}"

    def start(self) -> None:
        argv = [*pinned(self.cpu, self.nice), *self.spec.command(self.port, self.data_dir)]
        with open(self.log_path, "wb") as log:
            log.write(("$ " + shlex.join(argv) + "\n").encode())
            log.flush()
            # nice/taskset exec the server, so proc.pid is the server's own PID.
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.spec.env},
            )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"{self.spec.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise ServerFailed(
            f"{self.spec.name} did not listen on port {self.port} within {timeout:.0f}s:\n"
            + self.log_tail()
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        # Anything the server forked is in its session/process group (whose
        # id is the server's PID); make sure none of it outlives the run.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def sha256_via_get(url: str, timeout: float = 300.0) -> tuple[str, int] | None:
    """sha256 and length of the body GET returns for ``url``, or None if GET is not 200.

    Uses the stdlib client so run.py needs nothing beyond Python itself.
    """
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout
    )
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        if resp.status != 200:
            return None
        digest = hashlib.sha256()
        size = 0
        while block := resp.read(8 * 1024 * 1024):
            digest.update(block)
            size += len(block)
        return digest.hexdigest(), size
    finally:
        conn.close()
