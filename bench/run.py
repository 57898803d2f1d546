"""Benchmark tether against tus-node-server and a bare uvicorn app.

    python bench/run.py [--reps 5] [--workloads A,C,D] [--quick]
                        [--tether-durability process,machine] [--json out.json]

Each repetition runs every (workload, server) pair once, servers
interleaved (and their order rotated per repetition) so slow drifts of
the machine hit all servers alike. Every timed run: fresh empty data
dir, page-cache warm-up, server pinned to CPU 0, client pinned to CPU 1,
server CPU and RSS read from /proc, stored bytes checked by sha256.
See bench/README.md for how to read the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from procstat import (
    RssSampler,
    busy_seconds,
    steal_seconds,
    tree_cpu_seconds,
    wait_for_quiet,
)
from servers import (
    BENCH,
    CLIENT_CPU,
    SERVER_CPU,
    TETHER_PATH,
    RunningServer,
    ServerFailed,
    ServerSpec,
    bare_spec,
    ensure_peer_installed,
    free_port,
    pinned,
    python_for_servers,
    sha256_via_get,
    tether_missing,
    tether_spec,
    tus_node_spec,
)
from workloads import (
    MiB,
    Workload,
    data_size_needed,
    default_data_path,
    ensure_data_file,
    sha256_of_file,
    sha256_of_range,
    workload_table,
)

GB = 1e9  # rates and CPU-s/GB use decimal units, like most published figures
MB = 1e6
WARMUP_BYTES = 1 << 30
BENCH_CPUS = (int(SERVER_CPU), int(CLIENT_CPU))


class VerifyError(RuntimeError):
    """Stored bytes differ from what the client sent: the loudest failure there is."""


@dataclass
class RunRecord:
    rep: int
    workload: str
    server: str
    ok: bool
    error: str = ""
    wall_s: float = 0.0
    bytes: int = 0
    requests: int = 0
    reconnects: int = 0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    steal_s: float = 0.0  # hypervisor steal on the server's and client's cores
    foreign_cpu_s: float = 0.0  # CPU other processes used on the server's core
    peak_rss_kib: int = 0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.wall_s

    @property
    def req_per_s(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_s_per_gb(self) -> float:
        return self.server_cpu_s / (self.bytes / GB)

    def figure(self, metric: str) -> float:
        return self.req_per_s if metric == "req/s" else self.mb_per_s


class ExpectedHashes:
    """sha256 of data-file slices, computed once per (offset, size)."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self._cache: dict[tuple[int, int], str] = {}

    def of(self, offset: int, size: int) -> str:
        key = (offset, size)
        if key not in self._cache:
            self._cache[key] = sha256_of_range(self.data, offset, size)
        return self._cache[key]


# ---------------------------------------------------------------- one timed run


def warm_page_cache(directory: Path, nbytes: int) -> None:
    """Write then delete ``nbytes`` so every run starts from the same page-cache state.

    The file is deleted before writeback, so it costs memory bandwidth, not
    disk; the final sync makes sure no earlier run's dirty pages are still
    being flushed while the next server is timed.
    """
    if nbytes > 0:
        block = b"\xa5" * (8 * MiB)
        path = directory / "warmup.bin"
        with open(path, "wb") as f:
            for _ in range(nbytes // len(block)):
                f.write(block)
        path.unlink()
    os.sync()


def run_client(
    args: argparse.Namespace, urls: list[str], workload: Workload, data: Path, out: Path
) -> dict[str, Any]:
    """Run client.py on the client core; several ``urls`` spread PATCHes round-robin."""
    argv = [
        *pinned(CLIENT_CPU, args.nice),
        python_for_servers(),
        str(BENCH / "client.py"),
        *(arg for url in urls for arg in ("--url", url)),
        "--workload",
        workload.name,
        "--data",
        str(data),
        "--send",
        args.send,
        "--timeout",
        str(args.timeout),
        "--json",
        str(out),
    ]
    if args.quick:
        argv.append("--quick")
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=args.timeout + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"client failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def _same_server_url(url: str, server: RunningServer) -> str:
    # Fetch from the server we started even if its Location names another host.
    parts = urlsplit(url)
    return urlunsplit(("http", f"127.0.0.1:{server.port}", parts.path, parts.query, ""))


def _hash_tree(root: Path, sizes: set[int]) -> dict[str, Path]:
    """sha256 -> path for every file under ``root`` whose size is one we look for."""
    found: dict[str, Path] = {}
    for path in root.rglob("*"):
        if path.is_file() and path.stat().st_size in sizes:
            found[sha256_of_file(path)] = path
    return found


def verify_uploads(
    server: RunningServer, uploads: list[dict[str, Any]], expected: ExpectedHashes
) -> None:
    """Check every upload's stored bytes; raise VerifyError naming the first bad one."""
    scanned: dict[str, Path] | None = None
    for up in uploads:
        want = expected.of(up["data_offset"], up["size"])
        path = server.spec.locate(up["url"], server.data_dir)
        if path is not None:
            if not path.is_file():
                raise VerifyError(f"{up['url']}: expected stored file {path} does not exist")
            got = sha256_of_file(path)
        else:
            fetched = sha256_via_get(_same_server_url(up["url"], server))
            if fetched is None:
                # No GET support (yet): look for the bytes anywhere in its data dir.
                if scanned is None:
                    scanned = _hash_tree(server.data_dir, {u["size"] for u in uploads})
                got = want if want in scanned else "<no stored file with this content>"
            else:
                got, size = fetched
                if size != up["size"]:
                    raise VerifyError(
                        f"{up['url']}: GET returned {size} bytes, uploaded {up['size']}"
                    )
        if got != want:
            raise VerifyError(f"{up['url']}: sha256 {got} != expected {want}")


def timed_run(
    args: argparse.Namespace,
    spec: ServerSpec,
    workload: Workload,
    rep: int,
    root: Path,
    data: Path,
    expected: ExpectedHashes,
) -> RunRecord:
    run_dir = root / f"rep{rep}-{workload.name}-{spec.slug}"
    (run_dir / "data").mkdir(parents=True)
    warm_page_cache(run_dir, args.warmup_bytes)
    if args.quiet_wait > 0 and not wait_for_quiet(BENCH_CPUS, args.quiet_wait):
        print(f"  (machine still busy after {args.quiet_wait:.0f}s; running anyway)", flush=True)
    server = RunningServer(spec, free_port(), run_dir / "data", run_dir / "server.log", args.nice)
    record = RunRecord(rep, workload.name, spec.name, ok=False)
    try:
        server.start()
        server.wait_ready()
        uploads = measure(args, server, workload, data, run_dir, record)
        verify_uploads(server, uploads, expected)
        record.ok = True
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
        record.error = _describe_failure(exc, server)
        _shout(f"{spec.name} / {workload.name} / rep {rep}: {record.error}")
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return record


def measure(
    args: argparse.Namespace,
    server: RunningServer,
    workload: Workload,
    data: Path,
    run_dir: Path,
    record: RunRecord,
) -> list[dict[str, Any]]:
    """Run the client once against ``server``, fill ``record``, return the uploads made."""
    cpu_before = tree_cpu_seconds(server.pid)
    steal_before = steal_seconds(BENCH_CPUS)
    busy_before = busy_seconds(int(SERVER_CPU))
    with RssSampler(server.pid) as rss:
        result = run_client(args, [server.base_url], workload, data, run_dir / "client.json")
    record.server_cpu_s = tree_cpu_seconds(server.pid) - cpu_before
    record.steal_s = steal_seconds(BENCH_CPUS) - steal_before
    busy = busy_seconds(int(SERVER_CPU)) - busy_before
    record.foreign_cpu_s = max(0.0, busy - record.server_cpu_s)
    record.peak_rss_kib = rss.peak_kib
    record.wall_s = result["wall_s"]
    record.bytes = result["bytes"]
    record.requests = result["requests"]
    record.reconnects = result["reconnects"]
    record.client_cpu_s = result["client_cpu_s"]
    uploads: list[dict[str, Any]] = result["uploads"]
    return uploads


def _describe_failure(exc: BaseException, server: RunningServer) -> str:
    # The prefixes matter: run_all() stops retrying a server that failed to start.
    if isinstance(exc, VerifyError):
        return f"SHA256 MISMATCH: {exc}"
    if isinstance(exc, ServerFailed):
        return f"server failed: {exc}"
    return f"{type(exc).__name__}: {exc}\n--- server log tail ---\n{server.log_tail()}"


def _shout(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! FAILURE: {message}\n{bar}\n", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the whole benchmark


def select_servers(args: argparse.Namespace) -> list[ServerSpec]:
    wanted = _csv(args.servers)
    specs: list[ServerSpec] = []
    if "tether" in wanted:
        missing = tether_missing(args.tether_cmd)
        if missing:
            print(f"SKIPPING tether: {missing}", flush=True)
        else:
            # No --tether-durability: one variant with tether's own default.
            variants: list[str | None] = [*_csv(args.tether_durability)] or [None]
            for durability in variants:
                specs.append(tether_spec(durability, args.tether_cmd, args.tether_path))
    if "tus-node" in wanted:
        missing = ensure_peer_installed()
        if missing:
            print(f"SKIPPING tus-node-server: {missing}", flush=True)
        else:
            specs.append(tus_node_spec())
    if "bare" in wanted:
        specs.append(bare_spec())
    return specs


def _csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def run_all(
    args: argparse.Namespace,
    specs: list[Any],
    workloads: list[Workload],
    root: Path,
    data: Path,
    timed: Callable[..., Any] | None = None,
    progress: Callable[..., None] | None = None,
) -> list[Any]:
    """Every (workload, spec) pair once per repetition; ``timed``/``progress`` default to
    this file's (cluster.py passes its own, for its setups and records)."""
    timed = timed or timed_run
    progress = progress or _progress
    expected = ExpectedHashes(data)
    records: list[Any] = []
    broken: set[str] = set()
    total = args.reps * len(workloads) * len(specs)
    for rep in range(1, args.reps + 1):
        # Rotate the server order each repetition so none always runs first.
        shift = (rep - 1) % len(specs)
        order = specs[shift:] + specs[:shift]
        for workload in workloads:
            for spec in order:
                if spec.name in broken:
                    continue
                rec = timed(args, spec, workload, rep, root, data, expected)
                records.append(rec)
                progress(len(records), total, rec, workload)
                if rec.error.startswith("server failed"):
                    # A server that cannot start will not start next time either.
                    print(f"disabling {spec.name} for the rest of this run", file=sys.stderr)
                    broken.add(spec.name)
    return records


def noise_warnings(rec: Any) -> str:
    """What made a timed run's figure doubtful, for its progress line (a ``RunRecord`` or
    anything with the same timing fields)."""
    warn = ""
    if rec.client_cpu_s > 0.8 * rec.wall_s:
        warn += "  (client CPU near saturation: figure may be client-bound)"
    if rec.steal_s > 0.05 * rec.wall_s:
        warn += f"  (hypervisor stole {rec.steal_s:.2f}s CPU: noisy run)"
    if rec.foreign_cpu_s > 0.05 * rec.wall_s:
        warn += f"  (other processes used {rec.foreign_cpu_s:.2f}s on the server's core: noisy run)"
    if rec.reconnects:
        warn += f"  ({rec.reconnects} reconnects: server closed keep-alive connections)"
    return warn


def _progress(n: int, total: int, rec: RunRecord, workload: Workload) -> None:
    if not rec.ok:
        print(f"[{n}/{total}] rep {rec.rep} {rec.workload} {rec.server:<16} FAILED", flush=True)
        return
    warn = noise_warnings(rec)
    print(
        f"[{n}/{total}] rep {rec.rep} {rec.workload} {rec.server:<16} "
        f"{rec.figure(workload.metric):9.1f} {workload.metric:<5} wall {rec.wall_s:7.3f}s "
        f"cpu {rec.server_cpu_s:6.2f}s  rss {rec.peak_rss_kib / 1024:7.1f} MiB  "
        f"client-cpu {rec.client_cpu_s:5.2f}s{warn}",
        flush=True,
    )


# ---------------------------------------------------------------- reporting


@dataclass
class Summary:
    workload: str
    server: str
    kind: str
    metric: str
    n: int
    median: float
    low: float
    high: float
    cpu_s_per_gb: float
    peak_rss_mib: float
    failures: int
    vs_tus_node: float | None = None
    vs_bare: float | None = None


def summarize(
    records: list[RunRecord], specs: list[ServerSpec], workloads: list[Workload]
) -> list[Summary]:
    out: list[Summary] = []
    for w in workloads:
        rows: dict[str, Summary] = {}
        for spec in specs:
            mine = [r for r in records if r.workload == w.name and r.server == spec.name]
            good = [r for r in mine if r.ok]
            if not mine:
                continue
            figures = [r.figure(w.metric) for r in good] or [float("nan")]
            rows[spec.kind if spec.kind != "tether" else spec.name] = Summary(
                workload=w.name,
                server=spec.name,
                kind=spec.kind,
                metric=w.metric,
                n=len(good),
                median=statistics.median(figures),
                low=min(figures),
                high=max(figures),
                cpu_s_per_gb=_median([r.cpu_s_per_gb for r in good]),
                peak_rss_mib=_median([r.peak_rss_kib / 1024 for r in good]),
                failures=len(mine) - len(good),
            )
        for row in rows.values():
            if row.kind == "tether":
                row.vs_tus_node = _ratio(row, rows.get("tus-node"))
                row.vs_bare = _ratio(row, rows.get("bare"))
        out.extend(rows.values())
    return out


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratio(row: Summary, other: Summary | None) -> float | None:
    if other is None or other.n == 0 or row.n == 0:
        return None
    return row.median / other.median


def print_table(summaries: list[Summary], workloads: list[Workload], reps: int) -> None:
    titles = {w.name: w.title for w in workloads}
    header = (
        f"{'wl':<3} {'server':<16} {'metric':<6} {'median':>9} {'min':>9} {'max':>9} "
        f"{'CPU-s/GB':>9} {'peakRSS':>9} {'/tus-node':>9} {'/bare':>7} {'ok':>5}"
    )
    print(
        f"\nResults: median of {reps} repetition(s); higher is better except CPU-s/GB and RSS (MiB)"
    )
    print(header)
    print("-" * len(header))
    last = ""
    for s in summaries:
        if s.workload != last:
            if last:
                print()
            print(f"{s.workload}: {titles[s.workload]}")
            last = s.workload
        if s.n == 0:
            print(f"{s.workload:<3} {s.server:<16} {s.metric:<6} {'FAILED':>9} {0:>2}/{s.failures}")
            continue
        print(
            f"{s.workload:<3} {s.server:<16} {s.metric:<6} "
            f"{s.median:9.1f} {s.low:9.1f} {s.high:9.1f} "
            f"{s.cpu_s_per_gb:9.2f} {s.peak_rss_mib:9.1f} {_fmt_ratio(s.vs_tus_node):>9} "
            f"{_fmt_ratio(s.vs_bare):>7} {s.n:>2}/{s.n + s.failures:<2}"
        )


def _fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def write_json(
    path: Path, args: argparse.Namespace, records: list[RunRecord], summaries: list[Summary]
) -> None:
    doc = {
        "args": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},
        "records": [asdict(r) for r in records],
        "summary": [asdict(s) for s in summaries],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


def describe_environment(specs: list[ServerSpec]) -> None:
    node = shutil.which("node")
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        if node
        else "-"
    )
    peer_pkg = BENCH / "peer" / "node_modules" / "@tus" / "server" / "package.json"
    peer_version = json.loads(peer_pkg.read_text())["version"] if peer_pkg.exists() else "-"
    print(f"servers: {', '.join(s.name for s in specs)}")
    print(
        f"node {node_version}, @tus/server {peer_version}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs (server on CPU 0, client on CPU 1)",
        flush=True,
    )


# ---------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--reps", type=int, default=5, help="repetitions per (workload, server); default 5"
    )
    p.add_argument("--workloads", default="A,C,D", help="comma list of A, C, D; default A,C,D")
    p.add_argument(
        "--quick", action="store_true", help="smoke test: 1 rep, small sizes (overrides --reps)"
    )
    p.add_argument(
        "--servers", default="tether,tus-node,bare", help="comma list; default all three"
    )
    p.add_argument(
        "--durability",
        choices=["process", "machine"],
        help="pass --durability X to tether (same as --tether-durability X)",
    )
    p.add_argument(
        "--tether-durability", help="comma list, e.g. process,machine: one tether variant each"
    )
    p.add_argument(
        "--tether-cmd",
        help="tether command template with {port} and {dir}, overriding servers.tether_command()",
    )
    p.add_argument(
        "--tether-path", default=TETHER_PATH, help=f"tether's creation path; default {TETHER_PATH}"
    )
    p.add_argument(
        "--send",
        choices=["sendfile", "buffer"],
        default="sendfile",
        help="client body source: zero-copy sendfile (default) or a preloaded buffer",
    )
    p.add_argument(
        "--warmup-mib",
        type=int,
        default=WARMUP_BYTES // MiB,
        help="page-cache warm-up file size before each run; default 1024, 0 = only sync",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where temp data dirs (and the cached payload) go; default $TMPDIR",
    )
    p.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness for server and client (default -10: favoured over other work on a "
        "shared machine; needs root, else ignored with a warning from nice; 0 = unchanged)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=10.0,
        help="before each run, wait up to this many seconds for both cores to be idle; 0 = don't",
    )
    p.add_argument("--timeout", type=float, default=900.0, help="per-run client timeout, seconds")
    p.add_argument("--keep", action="store_true", help="keep run dirs (data, logs) for inspection")
    p.add_argument("--json", type=Path, help="also write every run and the summary here")
    args = p.parse_args(argv)
    if args.quick:
        args.reps = 1
    if args.durability and not args.tether_durability:
        args.tether_durability = args.durability
    args.warmup_bytes = args.warmup_mib * MiB
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Keep this runner (RSS sampler, verification) off the server's core.
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    table = workload_table(args.quick)
    try:
        workloads = [table[name] for name in _csv(args.workloads)]
    except KeyError as exc:
        print(f"unknown workload {exc}; choose from {', '.join(table)}", file=sys.stderr)
        return 2
    specs = select_servers(args)
    if not specs:
        print("no server to benchmark", file=sys.stderr)
        return 2
    describe_environment(specs)
    # Sized for the whole table, not just the chosen workloads, so one cached file serves every run.
    size = data_size_needed(list(table.values()))
    data = ensure_data_file(default_data_path(args.work_dir / "tether-bench", size), size)
    root = Path(tempfile.mkdtemp(prefix="tether-bench-run-", dir=args.work_dir))
    started = time.monotonic()
    try:
        records = run_all(args, specs, workloads, root, data)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    summaries = summarize(records, specs, workloads)
    print_table(summaries, workloads, args.reps)
    print(
        f"\ntotal time {time.monotonic() - started:.0f}s"
        + (f"; run dirs kept in {root}" if args.keep else "")
    )
    if args.json:
        write_json(args.json, args, records, summaries)
    failed = [r for r in records if not r.ok]
    if failed:
        _shout(f"{len(failed)} run(s) failed; see messages above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
