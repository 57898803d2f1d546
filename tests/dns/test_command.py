"""``tether dns`` as a process: start, answer, survive garbage, stop; ``tether dns check``."""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from .helpers import addresses, query

CONFIG = """
zone = "example.net"
[[nameserver]]
name = "ns1"
ipv4 = ["192.0.2.53"]
[[pop]]
id = "fra"
ipv4 = ["192.0.2.10"]
weight = 2
[[pop]]
id = "ams"
ipv4 = ["192.0.2.20"]
ipv6 = ["2001:db8:20::1"]
[[service]]
name = "upload"
"""


def tether(*args: str) -> list[str]:
    return [sys.executable, "-m", "tether.cli", *args]


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "dns.toml"
    path.write_text(CONFIG)
    return path


class DnsProcess:
    """``tether dns --port 0`` in a child process; learns its ports from its first log line."""

    def __init__(self, config: Path) -> None:
        self.process = subprocess.Popen(
            tether("dns", "--config", str(config), "--port", "0", "--metrics-port", "0"),
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stderr is not None
        line = self.process.stderr.readline()  # blocks until the server logs, or exits
        if not line:
            self.process.wait(timeout=10)
            raise AssertionError(f"tether dns exited with {self.process.returncode}")
        started = json.loads(line)
        assert started["msg"] == "tether dns listening"
        self.port: int = started["port"]
        self.metrics_port: int = started["metrics_port"]

    def ask(self, message: dns.message.Message) -> dns.message.Message:
        return dns.query.udp(message, "127.0.0.1", port=self.port, timeout=2)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise
        finally:
            assert self.process.stderr is not None
            self.process.stderr.close()


@pytest.fixture
def server(config_file: Path) -> Iterator[DnsProcess]:
    proc = DnsProcess(config_file)
    try:
        yield proc
    finally:
        proc.stop()


def test_serves_and_stops_cleanly_on_sigterm(config_file: Path) -> None:
    proc = DnsProcess(config_file)
    try:
        response = proc.ask(query("upload.example.net.", ecs="203.0.113.0/24"))
        assert response.rcode() == dns.rcode.NOERROR
        assert addresses(response) in (["192.0.2.10"], ["192.0.2.20"])
    finally:
        assert proc.stop() == 0


def test_ten_thousand_random_packets_never_stop_the_server(server: DnsProcess) -> None:
    rng = random.Random(16)
    valid = query("upload.example.net.", ecs="203.0.113.0/24").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for batch in range(50):
            for _ in range(200):
                if rng.random() < 0.5:
                    packet = rng.randbytes(rng.randrange(0, 600))
                else:  # a real query with bytes changed: gets past the header more often
                    mutated = bytearray(valid)
                    for _ in range(rng.randrange(1, 6)):
                        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
                    packet = bytes(mutated[: rng.randrange(len(mutated) + 1)])
                sock.sendto(packet, ("127.0.0.1", server.port))
            # A real query after each batch: answered, so the batch was read and survived.
            response = server.ask(query("upload.example.net."))
            assert response.rcode() == dns.rcode.NOERROR, f"after batch {batch}"
            try:
                while sock.recv(65535):
                    pass
            except BlockingIOError:
                pass
    assert server.process.poll() is None
    metrics = httpx.get(f"http://127.0.0.1:{server.metrics_port}/metrics", trust_env=False)
    udp = next(
        line for line in metrics.text.splitlines() if line.startswith("tether_dns_queries_total")
    )
    assert int(udp.rsplit(" ", 1)[1]) >= 9_900


def test_check_prints_the_ranking(config_file: Path) -> None:
    result = subprocess.run(
        tether("dns", "check", "--config", str(config_file), "203.0.113.77"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "client subnet 203.0.113.0/24" in result.stdout
    assert "upload.example.net." in result.stdout
    assert "A    →" in result.stdout and "AAAA → 2001:db8:20::1" in result.stdout
    down = subprocess.run(
        tether("dns", "check", "--config", str(config_file), "203.0.113.0/24", "--down", "fra"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert down.returncode == 0
    assert "A    → 192.0.2.20" in down.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dns"], "--config FILE is required"),
        (["dns", "--config", "/nonexistent/dns.toml"], "cannot read"),
        (["dns", "check", "--config", "CONFIG", "not-an-address"], "not an address or subnet"),
        (["dns", "check", "--config", "CONFIG", "192.0.2.1", "--down", "lon"], "unknown POP 'lon'"),
    ],
)
def test_mistakes_exit_2_with_one_line(config_file: Path, args: list[str], message: str) -> None:
    args = [str(config_file) if a == "CONFIG" else a for a in args]
    result = subprocess.run(tether(*args), capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_is_reported(config_file: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            tether("dns", "--config", str(config_file), "--port", str(port)),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1 port {port}" in result.stderr


def test_debug_logs_every_query(config_file: Path) -> None:
    process = subprocess.Popen(
        tether("dns", "--config", str(config_file), "--port", "0", "--log-level", "debug"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        port = json.loads(process.stderr.readline())["port"]
        for _ in range(2):
            dns.query.udp(query("upload.example.net."), "127.0.0.1", port=port, timeout=2)
        deadline = time.monotonic() + 10
        logged: list[dict[str, object]] = []
        while len(logged) < 2 and time.monotonic() < deadline:
            entry = json.loads(process.stderr.readline())
            if entry["msg"] == "query":
                logged.append(entry)
        assert [e["cached"] for e in logged] == [False, True]
        assert logged[0]["question"] == "upload.example.net. A"
        assert logged[0]["rcode"] == "NOERROR"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        process.stderr.close()
