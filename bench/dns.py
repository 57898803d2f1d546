"""Benchmark ``tether dns`` against PowerDNS Authoritative with dnsperf.

    .venv/bin/python bench/dns.py [--duration 20] [--queries 50000] [--reps 1]
                                  [--no-nocache] [--json out.json]

PowerDNS Authoritative 4.7 (Debian's ``pdns-server`` + ``pdns-backend-bind``) serves the
same zone with a LUA record calling ``pickwhashed`` over the same POPs and weights: the
closest stock equivalent of tether's weighted hashing of the client subnet. Both get the
same query file (A queries for one name, each with an EDNS Client Subnet option of a
random subnet: 80% IPv4 /24, 20% IPv6 /56), from dnsperf, in one run:

1. throughput: dnsperf as fast as the server answers (``-c 4 -q 100``) for
   ``--duration`` seconds: queries per second, and latency percentiles at saturation;
2. latency at PowerDNS's load: dnsperf paced at PowerDNS's measured rate (``-Q``):
   the latency percentiles each server shows there. The target is tether's p99 < 2 ms.

Servers run on CPU 0 and dnsperf on CPU 1 (``taskset``), at ``--nice`` (default -10:
favoured over other work on a shared machine), each started fresh on a free loopback
port in its own temp dir, and stopped by PID. The timed runs hold
``/tmp/tether-bench.lock`` (``flock``), which other benchmarks on the machine share.

tether runs twice: as configured by default (its packet cache answers a query whose
bytes it has seen before without parsing it again; the query file repeats every
``--queries`` queries), and with ``--cache-entries 0``, where dnspython parses every
query (the cost of a subnet never seen before). See bench/README.md.

Missing Debian packages (dnsperf, pdns-server, pdns-backend-bind) are installed with
apt-get (root only); services the install would start are held back with policy-rc.d,
and a pdns the install started anyway is stopped and disabled.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# This file is called dns.py and Python puts its directory first on sys.path, so a plain
# "import dns" would import this script, not dnspython: look dnspython up without it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH]
try:
    import dns.edns
    import dns.message
    import dns.query
    import dns.rcode
except ImportError:  # pragma: no cover - a usage error, reported plainly
    sys.exit("bench/dns.py needs dnspython: run it with .venv/bin/python")
sys.path.insert(0, str(BENCH))

from procstat import wait_for_quiet  # noqa: E402
from servers import CLIENT_CPU, SERVER_CPU, pinned  # noqa: E402

REPO = BENCH.parent
TETHER_BIN = REPO / ".venv" / "bin" / "tether"
LOCK_PATH = Path("/tmp/tether-bench.lock")
PACKAGES = ("dnsperf", "pdns-server", "pdns-backend-bind")
ZONE = "example.net"
NAME = f"upload.{ZONE}."
# The POPs both servers choose from: (id, IPv4 address, weight).
POPS = (("a", "192.0.2.1", 4), ("b", "192.0.2.2", 2), ("c", "192.0.2.3", 1), ("d", "192.0.2.4", 1))
TARGET_P99_MS = 2.0


# ---------------------------------------------------------------- packages


def _installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return result.returncode == 0 and "install ok installed" in result.stdout


def _pids(name: str) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == name:
                    found.add(int(entry.name))
    return found


def ensure_packages(install: bool) -> None:
    """Install what is missing of :data:`PACKAGES`; never leave a system pdns running."""
    missing = [p for p in PACKAGES if not _installed(p)]
    if not missing:
        return
    if not install or os.geteuid() != 0:
        sys.exit(
            f"missing Debian packages: {' '.join(missing)} "
            f"(apt-get install --no-install-recommends {' '.join(missing)}, as root)"
        )
    print(f"installing {' '.join(missing)} ...", flush=True)
    before = _pids("pdns_server")
    # policy-rc.d exit 101 is Debian's way to say "start no service now" (invoke-rc.d and
    # deb-systemd-invoke both obey it): the package must not grab port 53 on this machine.
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:
        policy.write_text(
            "#!/bin/sh\n# bench/dns.py: no service starts during its install\nexit 101\n"
        )
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    try:
        if subprocess.run(command, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, check=True)
            subprocess.run(command, env=env, check=True)
    finally:
        if created:
            policy.unlink()
    # Whatever the install started anyway, and only that, is stopped (and kept from
    # starting at boot).
    if "pdns-server" in missing and Path("/run/systemd/system").exists():
        subprocess.run(["systemctl", "disable", "--now", "pdns.service"], check=False)
    for pid in _pids("pdns_server") - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if missing_now := [p for p in PACKAGES if not _installed(p)]:
        sys.exit(f"could not install {' '.join(missing_now)}")


# ---------------------------------------------------------------- files


def write_tether_config(path: Path) -> None:
    lines = [
        f'zone = "{ZONE}"',
        "ttl = 30",
        "answers = 1",
        "[[nameserver]]",
        'name = "ns1"',
        'ipv4 = ["127.0.0.1"]',
    ]
    for pop_id, address, weight in POPS:
        lines += ["[[pop]]", f'id = "{pop_id}"', f'ipv4 = ["{address}"]', f"weight = {weight}"]
    lines += ["[[service]]", 'name = "upload"']
    path.write_text("\n".join(lines) + "\n")


def write_pdns_config(directory: Path, port: int) -> None:
    """A PowerDNS config dir of its own: bind backend, one zone, the LUA record."""
    directory.mkdir(parents=True, exist_ok=True)
    choices = ",".join(f"{{{weight},'{address}'}}" for _, address, weight in POPS)
    (directory / "example.net.zone").write_text(
        f"$ORIGIN {ZONE}.\n"
        "@ 3600 IN SOA ns1 hostmaster 1 3600 600 604800 60\n"
        "@ 3600 IN NS ns1\n"
        "ns1 3600 IN A 127.0.0.1\n"
        f'upload 30 IN LUA A "pickwhashed({{{choices}}})"\n'
    )
    (directory / "named.conf").write_text(
        f'zone "{ZONE}" {{ type master; file "{directory}/example.net.zone"; }};\n'
    )
    (directory / "pdns.conf").write_text(
        "\n".join(
            [
                "launch=bind",
                f"bind-config={directory}/named.conf",
                "local-address=127.0.0.1",
                f"local-port={port}",
                "enable-lua-records=yes",
                "edns-subnet-processing=yes",
                f"socket-dir={directory}",
                "daemon=no",
                "guardian=no",
                "write-pid=no",
                "disable-syslog=yes",
                "loglevel=4",
                "webserver=no",
                "api=no",
                "security-poll-suffix=",  # no status lookup over the internet
                # One thread of each kind: the server has one core, more threads only
                # switch context (measured: slightly fewer queries per second).
                "receiver-threads=1",
                "distributor-threads=1",
            ]
        )
        + "\n"
    )


def random_subnet(rng: random.Random, ipv6_share: float) -> tuple[str, int]:
    if rng.random() < ipv6_share:
        groups = [0x2001, rng.randrange(0x10000), rng.randrange(0x10000), rng.randrange(0x100) << 8]
        return ":".join(f"{g:x}" for g in groups) + "::", 56
    first = rng.choice([n for n in range(1, 224) if n not in (10, 127)])
    return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.0", 24


def write_queries(path: Path, count: int, seed: int, ipv6_share: float) -> None:
    """dnsperf's binary input (``-B``): each query as on a TCP stream, length first."""
    rng = random.Random(seed)
    with open(path, "wb") as out:
        for _ in range(count):
            address, prefix = random_subnet(rng, ipv6_share)
            message = dns.message.make_query(
                NAME, "A", use_edns=0, payload=1232, options=[dns.edns.ECSOption(address, prefix)]
            )
            message.flags = 0  # resolvers ask authoritative servers without RD
            out.write(message.to_wire(prepend_length=True))


# ---------------------------------------------------------------- servers


def free_port() -> int:
    """A port free for both UDP and TCP on loopback (DNS servers bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port")


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, nice: int) -> None:
        with open(self.log, "wb") as log:
            # taskset and nice exec their argument: the PID is the server's own.
            self.process = subprocess.Popen(
                [*pinned(SERVER_CPU, nice), *self.argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        probe = dns.message.make_query(NAME, "A")
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log}")
            with contextlib.suppress(Exception):
                dns.query.udp(probe, "127.0.0.1", port=self.port, timeout=0.5)
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer within 30 s; see {self.log}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def answer_shares(port: int, count: int, seed: int, ipv6_share: float) -> dict[str, float]:
    """Which POP the server names, over ``count`` random subnets: a sanity check that
    both spread clients by weight (they hash differently, so per subnet they differ)."""
    rng = random.Random(seed)
    by_address = {address: pop_id for pop_id, address, _ in POPS}
    seen: Counter[str] = Counter()
    for _ in range(count):
        address, prefix = random_subnet(rng, ipv6_share)
        message = dns.message.make_query(
            NAME, "A", use_edns=0, options=[dns.edns.ECSOption(address, prefix)]
        )
        response = dns.query.udp(message, "127.0.0.1", port=port, timeout=2)
        answers = [rdata.to_text() for rrset in response.answer for rdata in rrset]
        if response.rcode() != dns.rcode.NOERROR or len(answers) != 1:
            raise RuntimeError(f"unexpected answer for {address}/{prefix}:\n{response}")
        seen[by_address[answers[0]]] += 1
    return {pop_id: seen[pop_id] / count for pop_id, _, _ in POPS}


# ---------------------------------------------------------------- dnsperf


@dataclass
class PerfResult:
    qps: float
    sent: int
    completed: int
    lost: int
    rcodes: dict[str, int]
    latency_ms: dict[str, float] = field(default_factory=dict)


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p99.9": at(0.999),
        "max": ordered[-1] * 1000,
        "mean": statistics.fmean(ordered) * 1000,
    }


def run_dnsperf(
    port: int, queries: Path, duration: float, rate: int | None, out: Path, nice: int
) -> PerfResult:
    argv = [
        *pinned(CLIENT_CPU, nice),
        "dnsperf",
        "-B",
        "-d",
        str(queries),
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-l",
        str(duration),
        "-c",
        "4",
        "-q",
        "100",
        "-t",
        "2",
        "-v",  # one line per answer, with its latency: the percentiles come from these
    ]
    if rate:
        argv += ["-Q", str(rate)]
    with open(out, "wb") as f:
        subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, check=True, timeout=duration + 60)
    latencies: list[float] = []
    summary: dict[str, str] = {}
    rcodes: dict[str, int] = {}
    with open(out, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("> "):
                latencies.append(float(line.rsplit(" ", 1)[1]))
            elif ":" in line and line.startswith("  "):
                key, _, value = line.strip().partition(":")
                summary[key] = value.strip()
    parts = summary.get("Response codes", "").replace(",", "").split()
    for i in range(0, len(parts) - 1, 3):
        rcodes[parts[i]] = int(parts[i + 1])
    return PerfResult(
        qps=float(summary["Queries per second"]),
        sent=int(summary["Queries sent"]),
        completed=int(summary["Queries completed"].split()[0]),
        lost=int(summary["Queries lost"].split()[0]),
        rcodes=rcodes,
        latency_ms=percentiles(latencies),
    )


# ---------------------------------------------------------------- the run


@contextlib.contextmanager
def bench_lock(timeout: float) -> Iterator[None]:
    """Hold /tmp/tether-bench.lock (flock(2), as ``flock /tmp/tether-bench.lock cmd``)."""
    with open(LOCK_PATH, "a+") as lock:
        deadline = time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    print(f"waiting for {LOCK_PATH} (another benchmark runs) ...", flush=True)
                    told = True
                if time.monotonic() > deadline:
                    sys.exit(f"{LOCK_PATH} still held after {timeout:.0f} s")
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def servers_for(work: Path, include_nocache: bool) -> list[tuple[str, list[str], int]]:
    """(name, argv, port) of each server under test; PowerDNS first (its rate sets
    the load of the latency runs)."""
    tether_config = work / "tether.toml"
    write_tether_config(tether_config)
    pdns_port = free_port()
    write_pdns_config(work / "pdns", pdns_port)
    specs = [("powerdns-lua", ["pdns_server", f"--config-dir={work / 'pdns'}"], pdns_port)]

    def tether(port: int, *extra: str) -> list[str]:
        return [
            str(TETHER_BIN),
            "dns",
            "--config",
            str(tether_config),
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra,
        ]

    port = free_port()
    specs.append(("tether", tether(port), port))
    if include_nocache:
        port = free_port()
        specs.append(("tether-nocache", tether(port, "--cache-entries", "0"), port))
    return specs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20, help="seconds per dnsperf run")
    parser.add_argument("--queries", type=int, default=50_000, help="queries in the file")
    parser.add_argument("--ipv6-share", type=float, default=0.2, help="share of IPv6 subnets")
    parser.add_argument("--reps", type=int, default=1, help="repetitions (medians reported)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--nice", type=int, default=-10, help="niceness of servers and dnsperf")
    parser.add_argument("--no-nocache", action="store_true", help="skip tether --cache-entries 0")
    parser.add_argument("--no-install", action="store_true", help="never run apt-get")
    parser.add_argument("--lock-timeout", type=float, default=3600)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, outputs)")
    args = parser.parse_args(argv)

    ensure_packages(install=not args.no_install)
    if not TETHER_BIN.exists():
        sys.exit(f"{TETHER_BIN} is missing: set up .venv first (scripts/serve does)")
    work = Path(tempfile.mkdtemp(prefix="tether-dns-bench-"))
    results: dict[str, dict[str, list[PerfResult]]] = {}
    shares: dict[str, dict[str, float]] = {}
    rates: list[int] = []  # PowerDNS's rate per repetition: the load of the paced runs
    try:
        queries = work / "queries.bin"
        write_queries(queries, args.queries, args.seed, args.ipv6_share)
        specs = servers_for(work, include_nocache=not args.no_nocache)
        print(
            f"{args.queries} queries (A {NAME}, ECS: {1 - args.ipv6_share:.0%} IPv4 /24, "
            f"{args.ipv6_share:.0%} IPv6 /56), {args.duration:g} s per run, "
            f"servers on CPU {SERVER_CPU}, dnsperf on CPU {CLIENT_CPU}",
            flush=True,
        )
        with bench_lock(args.lock_timeout):
            for rep in range(1, args.reps + 1):
                rate: int | None = None
                for name, command, port in specs:
                    server = Server(name, command, port, work / f"{name}-{rep}.log")
                    if not wait_for_quiet((int(SERVER_CPU), int(CLIENT_CPU)), limit=30):
                        print("  (the machine never went quiet: figures may be noisy)")
                    server.start(args.nice)
                    try:
                        if rep == 1:
                            shares[name] = answer_shares(port, 2000, args.seed + 1, args.ipv6_share)
                        out = work / f"{name}-{rep}-max.txt"
                        peak = run_dnsperf(port, queries, args.duration, None, out, args.nice)
                        if rate is None:  # PowerDNS comes first: its rate is the load
                            rate = int(peak.qps)
                            rates.append(rate)
                        out = work / f"{name}-{rep}-at-rate.txt"
                        paced = run_dnsperf(port, queries, args.duration, rate, out, args.nice)
                    finally:
                        server.stop()
                    runs = results.setdefault(name, {"max": [], "at_rate": []})
                    runs["max"].append(peak)
                    runs["at_rate"].append(paced)
                    print(
                        f"[rep {rep}] {name:15} {peak.qps:9.0f} q/s  "
                        f"p99 {peak.latency_ms.get('p99', 0):7.2f} ms at max; "
                        f"at {rate} q/s p50 {paced.latency_ms.get('p50', 0):.3f} "
                        f"p99 {paced.latency_ms.get('p99', 0):.3f} ms; "
                        f"lost {peak.lost + paced.lost}",
                        flush=True,
                    )
        report(results, shares, args.reps, rates)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "results": {
                            n: {k: [asdict(r) for r in v] for k, v in runs.items()}
                            for n, runs in results.items()
                        },
                        "shares": shares,
                        "args": {k: str(v) for k, v in vars(args).items()},
                    },
                    indent=2,
                )
            )
        return 0 if check_target(results) else 1
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _median(runs: list[PerfResult], pick: str) -> float:
    if pick == "qps":
        return statistics.median(r.qps for r in runs)
    return statistics.median(r.latency_ms.get(pick, float("nan")) for r in runs)


def report(
    results: dict[str, dict[str, list[PerfResult]]],
    shares: dict[str, dict[str, float]],
    reps: int,
    rates: list[int],
) -> None:
    base = _median(results["powerdns-lua"]["max"], "qps")
    rate = int(statistics.median(rates))
    print()
    print(f"medians of {reps} rep(s); latency in ms")
    print(
        f"{'server':16}{'q/s':>10}{'x pdns':>8}{'p50':>8}{'p99':>8}"
        f" | at ~{rate} q/s:{'p50':>7}{'p90':>7}{'p99':>7}{'p99.9':>7}"
    )
    for name, runs in results.items():
        qps = _median(runs["max"], "qps")
        print(
            f"{name:16}{qps:10.0f}{qps / base:7.2f}x"
            f"{_median(runs['max'], 'p50'):8.2f}{_median(runs['max'], 'p99'):8.2f}"
            f" | {'':12}"
            + "".join(f"{_median(runs['at_rate'], p):7.3f}" for p in ("p50", "p90", "p99", "p99.9"))
        )
    print()
    print("share of answers per POP over 2000 random subnets (weights 4:2:1:1 = 50/25/12.5/12.5%)")
    for name, by_pop in shares.items():
        print(f"  {name:16}" + "  ".join(f"{p} {s:6.1%}" for p, s in by_pop.items()))


def check_target(results: dict[str, dict[str, list[PerfResult]]]) -> bool:
    pdns = _median(results["powerdns-lua"]["max"], "qps")
    tether = _median(results["tether"]["max"], "qps")
    p99 = _median(results["tether"]["at_rate"], "p99")
    qps_ok, p99_ok = tether >= pdns, p99 < TARGET_P99_MS
    print()
    print(
        f"target: tether q/s >= PowerDNS q/s: {tether:.0f} vs {pdns:.0f} "
        f"({tether / pdns:.2f}x): {'met' if qps_ok else 'NOT MET'}"
    )
    print(
        f"target: tether p99 < {TARGET_P99_MS} ms at PowerDNS's rate: {p99:.3f} ms: "
        f"{'met' if p99_ok else 'NOT MET'}"
    )
    return qps_ok and p99_ok


if __name__ == "__main__":
    sys.exit(main())
