"""Benchmark a three-node tether cluster against one tether node on SQLite.

    python3 bench/cluster.py [--reps 5] [--workloads A,C] [--stores postgresql,redis]
                             [--quick] [--json out.json]

Setups, interleaved within each repetition (order rotated per repetition):

- ``single[sqlite]``: one ``tether serve`` on SQLite state, as bench/run.py runs it: the
  baseline;
- ``cluster[postgresql]``: three ``tether serve`` on three loopback ports sharing one data
  directory (``file://`` storage) and PostgreSQL state, in a fresh schema per run;
- ``cluster[redis]``: the same on Redis state, under a fresh key prefix per run.

The client sends each upload's POST to the first node and each PATCH to the next node,
round-robin, on one keep-alive connection per node, so every PATCH lands on another node
than the request before it. Everything else is bench/run.py's timed run: fresh data dir,
~1 GiB page-cache warm-up, all nodes pinned to CPU 0 (``--spread``: each node on a CPU of
its own, 0, 2, 3, …, as on machines of their own) and the client to CPU 1, every stored
file checked by sha256 (here: GET from the last node). PostgreSQL and Redis run where they
run (they are shared services), and their CPU time over each run is read from /proc and
reported per request. Each schema and key prefix is dropped after its run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from procstat import (
    CLK_TCK,
    RssSampler,
    busy_seconds,
    steal_seconds,
    tree_cpu_seconds,
    wait_for_quiet,
)
from run import (
    WARMUP_BYTES,
    ExpectedHashes,
    RunRecord,
    VerifyError,
    noise_warnings,
    run_all,
    run_client,
    verify_uploads,
    warm_page_cache,
)
from servers import (
    CLIENT_CPU,
    SERVER_CPU,
    TETHER_PATH,
    VENV_PY,
    RunningServer,
    ServerFailed,
    ServerSpec,
    free_port,
    tether_command,
    tether_missing,
    tether_spec,
)
from workloads import (
    MiB,
    Workload,
    data_size_needed,
    default_data_path,
    ensure_data_file,
    workload_table,
)

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
NODES = 3

# Issue 4's targets: the cluster's median over the single node's median, per workload.
TARGETS: dict[tuple[str, str], float] = {
    ("A", "postgresql"): 0.85,
    ("A", "redis"): 0.85,
    ("C", "postgresql"): 0.60,
    ("C", "redis"): 0.80,
}

# Processes whose CPU time is the state store's (all of PostgreSQL's backends are called
# "postgres"). They are shared services: anything else using them during a run counts too.
STORE_PROCESSES = {"postgresql": "postgres", "redis": "redis-server"}


def node_cpus(nodes: int, spread: bool, available: set[int]) -> list[int]:
    """The CPU each node runs on: all on the server's, or (``spread``) one each out of
    ``available``, never the client's, the server's first (the single node's: a setup of
    n nodes takes the first n). SystemExit when there are too few CPUs for that."""
    if not spread:
        return [int(SERVER_CPU)] * nodes
    usable = sorted(available - {int(CLIENT_CPU)}, key=lambda cpu: (cpu != int(SERVER_CPU), cpu))
    if len(usable) < nodes:
        raise SystemExit(
            f"--spread needs {nodes + 1} CPUs ({nodes} nodes and the client), "
            f"this process may use {len(usable) + 1}"
        )
    return usable[:nodes]


def where_nodes_run(cpus: list[int]) -> str:
    if len(set(cpus)) == 1:
        return f"nodes on CPU {cpus[0]}"
    return f"nodes on CPUs {','.join(map(str, cpus))} (one each)"


def watched_cpus(cpus: list[int]) -> tuple[int, ...]:
    """The nodes' CPUs and the client's: where other work would pollute a run."""
    return tuple(sorted({*cpus, int(CLIENT_CPU)}))


@dataclass(frozen=True)
class Setup:
    """One column of the comparison: how many nodes, on which state store."""

    name: str
    store: str  # "sqlite", "postgresql" or "redis"
    nodes: int
    base_url: str = ""  # the server's URL for postgresql/redis, without schema or prefix
    baseline: bool = False  # the single node the others are compared with

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.name)

    def state_url(self, data_dir: Path) -> str:
        """A state URL nobody used before; state_stores.drop() removes what it names."""
        tag = secrets.token_hex(4)
        join = "&" if "?" in self.base_url else "?"  # (drop() wants ours last)
        if self.store == "postgresql":
            return f"{self.base_url}{join}schema=bench_{tag}"
        if self.store == "redis":
            return f"{self.base_url}{join}prefix=bench:{tag}:"
        return f"sqlite:///{data_dir}/state.db"


@dataclass
class ClusterRecord(RunRecord):
    store_cpu_s: float = 0.0  # CPU time of the PostgreSQL/Redis processes over the run

    @property
    def server_us_per_request(self) -> float:
        return self.server_cpu_s / self.requests * 1e6

    @property
    def store_us_per_request(self) -> float:
        return self.store_cpu_s / self.requests * 1e6


# ---------------------------------------------------------------- state stores


def drop_state(url: str) -> None:
    """Remove the schema or keys a run created (nothing to do for SQLite)."""
    if url.startswith("sqlite:"):
        return
    from state_stores import drop  # needs the venv's psycopg / redis

    from tether.backends import redact

    try:
        asyncio.run(drop(url))
    except Exception as exc:  # cleanup must not hide the run's own result
        print(f"  (could not clean up {redact(url)}: {exc})", file=sys.stderr, flush=True)


def unreachable(setup: Setup) -> str | None:
    """Why ``setup``'s state store cannot be used, or None if it answers."""
    if setup.store == "sqlite":
        return None
    from tether.backends import open_state

    url = setup.state_url(Path("."))

    async def probe() -> None:
        store = open_state(url)
        try:
            await asyncio.wait_for(store.check(), 5)
        finally:
            await store.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        drop_state(url)
    return None


def store_cpu_seconds(store: str) -> float:
    """CPU seconds used so far by every live process of ``store``'s server."""
    comm = STORE_PROCESSES.get(store)
    if comm is None:
        return 0.0
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        if raw[raw.index("(") + 1 : raw.rindex(")")] != comm:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / CLK_TCK


# ---------------------------------------------------------------- one timed run


def node_specs(setup: Setup, state: str, durability: str | None) -> list[ServerSpec]:
    base = tether_spec(durability, None, TETHER_PATH)
    specs = []
    for index in range(1, setup.nodes + 1):
        node_id = None if setup.baseline else f"n{index}"

        def command(port: int, data_dir: Path, node_id: str | None = node_id) -> list[str]:
            return tether_command(port, data_dir, durability, state=state, node_id=node_id)

        specs.append(replace(base, name=f"{setup.name}/{index}", command=command))
    return specs


def timed_run(
    args: argparse.Namespace,
    setup: Setup,
    workload: Workload,
    rep: int,
    root: Path,
    data: Path,
    expected: ExpectedHashes,
) -> ClusterRecord:
    run_dir = root / f"rep{rep}-{workload.name}-{setup.slug}"
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True)
    warm_page_cache(run_dir, args.warmup_bytes)
    cpus = args.cpus[: setup.nodes]
    if args.quiet_wait > 0 and not wait_for_quiet(watched_cpus(cpus), args.quiet_wait):
        print(f"  (machine still busy after {args.quiet_wait:.0f}s; running anyway)", flush=True)
    state = setup.state_url(data_dir)
    nodes = [
        RunningServer(spec, free_port(), data_dir, run_dir / f"node{i}.log", args.nice, str(cpu))
        for i, (spec, cpu) in enumerate(
            zip(node_specs(setup, state, args.durability), cpus, strict=True), start=1
        )
    ]
    record = ClusterRecord(rep, workload.name, setup.name, ok=False)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        uploads = measure(args, setup, nodes, workload, data, run_dir, record)
        verify_uploads(nodes[-1], uploads, expected)
        record.ok = True
    except (RuntimeError, OSError, subprocess.TimeoutExpired, ValueError, KeyError) as exc:
        record.error = describe_failure(exc, nodes)
        shout(f"{setup.name} / {workload.name} / rep {rep}: {record.error}")
    finally:
        for node in nodes:
            node.stop()
        drop_state(state)
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    return record


def measure(
    args: argparse.Namespace,
    setup: Setup,
    nodes: list[RunningServer],
    workload: Workload,
    data: Path,
    run_dir: Path,
    record: ClusterRecord,
) -> list[dict[str, Any]]:
    """Run the client once against ``nodes``, fill ``record``, return the uploads made."""
    cpu_before = sum(tree_cpu_seconds(node.pid) for node in nodes)
    store_before = store_cpu_seconds(setup.store)
    node_cpu_set = sorted({int(node.cpu) for node in nodes})
    steal_before = steal_seconds(watched_cpus(node_cpu_set))
    busy_before = sum(busy_seconds(cpu) for cpu in node_cpu_set)
    with contextlib.ExitStack() as stack:
        samplers = [stack.enter_context(RssSampler(node.pid)) for node in nodes]
        urls = [node.base_url for node in nodes]
        result = run_client(args, urls, workload, data, run_dir / "client.json")
    record.server_cpu_s = sum(tree_cpu_seconds(node.pid) for node in nodes) - cpu_before
    record.store_cpu_s = store_cpu_seconds(setup.store) - store_before
    record.steal_s = steal_seconds(watched_cpus(node_cpu_set)) - steal_before
    busy = sum(busy_seconds(cpu) for cpu in node_cpu_set) - busy_before
    # The state store may run on the nodes' cores too: that is the setup, not noise.
    record.foreign_cpu_s = max(0.0, busy - record.server_cpu_s - record.store_cpu_s)
    record.peak_rss_kib = sum(sampler.peak_kib for sampler in samplers)
    record.wall_s = result["wall_s"]
    record.bytes = result["bytes"]
    record.requests = result["requests"]
    record.reconnects = result["reconnects"]
    record.client_cpu_s = result["client_cpu_s"]
    uploads: list[dict[str, Any]] = result["uploads"]
    return uploads


def describe_failure(exc: BaseException, nodes: list[RunningServer]) -> str:
    if isinstance(exc, VerifyError):
        return f"SHA256 MISMATCH: {exc}"
    if isinstance(exc, ServerFailed):
        return f"server failed: {exc}"
    logs = "\n".join(f"--- {node.spec.name} log tail ---\n{node.log_tail()}" for node in nodes)
    return f"{type(exc).__name__}: {exc}\n{logs}"


def shout(message: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!!! FAILURE: {message}\n{bar}\n", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the whole benchmark


def progress(n: int, total: int, rec: ClusterRecord, workload: Workload) -> None:
    head = f"[{n}/{total}] rep {rec.rep} {rec.workload} {rec.server:<20}"
    if not rec.ok:
        print(f"{head} FAILED", flush=True)
        return
    warn = noise_warnings(rec)
    print(
        f"{head} {rec.figure(workload.metric):8.1f} {workload.metric:<5} "
        f"wall {rec.wall_s:7.3f}s  server {rec.server_us_per_request:6.0f} us/req  "
        f"store {rec.store_us_per_request:5.0f} us/req  "
        f"client-cpu {rec.client_cpu_s:5.2f}s{warn}",
        flush=True,
    )


@dataclass
class Summary:
    workload: str
    setup: str
    store: str
    metric: str
    n: int
    median: float
    low: float
    high: float
    server_us_per_request: float
    store_us_per_request: float
    peak_rss_mib: float
    failures: int
    vs_single: float | None = None
    target: float | None = None


def summarize(
    records: list[ClusterRecord], setups: list[Setup], workloads: list[Workload]
) -> list[Summary]:
    out: list[Summary] = []
    for w in workloads:
        baseline: Summary | None = None
        for setup in setups:
            mine = [r for r in records if r.workload == w.name and r.server == setup.name]
            if not mine:
                continue
            good = [r for r in mine if r.ok]
            figures = [r.figure(w.metric) for r in good] or [float("nan")]
            row = Summary(
                workload=w.name,
                setup=setup.name,
                store=setup.store,
                metric=w.metric,
                n=len(good),
                median=statistics.median(figures),
                low=min(figures),
                high=max(figures),
                server_us_per_request=median([r.server_us_per_request for r in good]),
                store_us_per_request=median([r.store_us_per_request for r in good]),
                peak_rss_mib=median([r.peak_rss_kib / 1024 for r in good]),
                failures=len(mine) - len(good),
                target=TARGETS.get((w.name, setup.store)),
            )
            if setup.baseline:
                baseline = row
            elif baseline is not None and baseline.n and row.n:
                row.vs_single = row.median / baseline.median
            out.append(row)
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def print_table(summaries: list[Summary], workloads: list[Workload], reps: int, where: str) -> None:
    titles = {w.name: w.title for w in workloads}
    header = (
        f"{'wl':<3} {'setup':<20} {'metric':<6} {'median':>8} {'min':>8} {'max':>8} "
        f"{'srv us/req':>10} {'store us/req':>12} {'RSS MiB':>8} {'/single':>8} "
        f"{'target':>7} {'ok':>5}"
    )
    print(f"\nResults: median of {reps} repetition(s); {where}, ", end="")
    print(f"client on CPU {CLIENT_CPU}; srv = all nodes' CPU, store = PostgreSQL/Redis CPU")
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
            print(f"{s.workload:<3} {s.setup:<20} {s.metric:<6} {'FAILED':>8}  0/{s.failures}")
            continue
        ratio = "" if s.vs_single is None else f"{s.vs_single:.2f}x"
        target = ""
        if s.target is not None and s.vs_single is not None:
            target = f"{'met' if s.vs_single >= s.target else 'MISSED'} {s.target:.2f}"
        print(
            f"{s.workload:<3} {s.setup:<20} {s.metric:<6} {s.median:8.1f} {s.low:8.1f} "
            f"{s.high:8.1f} {s.server_us_per_request:10.0f} {s.store_us_per_request:12.0f} "
            f"{s.peak_rss_mib:8.1f} {ratio:>8} {target:>7} {s.n:>2}/{s.n + s.failures:<2}"
        )


# ---------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--reps", type=int, default=5, help="repetitions per (workload, setup)")
    p.add_argument("--workloads", default="A,C", help="comma list of A, C, D; default A,C")
    p.add_argument(
        "--stores",
        default="postgresql,redis",
        help="cluster state stores, comma list of postgresql, redis, sqlite (one file shared"
        " by the nodes: the cost of round-robin alone); default postgresql,redis",
    )
    p.add_argument(
        "--nodes",
        type=int,
        default=NODES,
        help=f"nodes per cluster setup; default {NODES} (1: the state store's cost alone)",
    )
    p.add_argument(
        "--spread",
        action="store_true",
        help="each node on a CPU of its own (0, 2, 3, ...; needs nodes+1 CPUs), as on machines"
        " of their own; default: every node on CPU 0",
    )
    p.add_argument("--postgres-url", default=DEFAULT_POSTGRES, help="without ?schema")
    p.add_argument("--redis-url", default=DEFAULT_REDIS, help="without ?prefix")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 rep, small sizes")
    p.add_argument(
        "--durability", choices=["process", "machine"], help="pass --durability X to every node"
    )
    p.add_argument("--send", choices=["sendfile", "buffer"], default="sendfile")
    p.add_argument(
        "--warmup-mib",
        type=int,
        default=WARMUP_BYTES // MiB,
        help="page-cache warm-up file size before each run; default 1024, 0 = only sync",
    )
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()))
    p.add_argument("--nice", type=int, default=-10, help="as in run.py; default -10")
    p.add_argument("--quiet-wait", type=float, default=10.0, help="as in run.py; default 10 s")
    p.add_argument("--timeout", type=float, default=900.0, help="per-run client timeout, s")
    p.add_argument("--keep", action="store_true", help="keep run dirs (data, logs)")
    p.add_argument("--json", type=Path, help="also write every run and the summary here")
    args = p.parse_args(argv)
    if args.quick:
        args.reps = 1
    args.warmup_bytes = args.warmup_mib * MiB
    args.cpus = node_cpus(args.nodes, args.spread, os.sched_getaffinity(0))
    return args


def select_setups(args: argparse.Namespace) -> list[Setup]:
    setups = [Setup("single[sqlite]", "sqlite", 1, baseline=True)]
    # "sqlite" (three nodes sharing one SQLite file, which works on one machine only) is
    # not a cluster setup anyone deploys; it tells round-robin costs from state-store costs.
    urls = {"postgresql": args.postgres_url, "redis": args.redis_url, "sqlite": ""}
    for store in (s.strip() for s in args.stores.split(",") if s.strip()):
        if store not in urls:
            raise SystemExit(f"unknown store {store!r}; choose from {', '.join(urls)}")
        name = f"cluster[{store}]" if args.nodes == NODES else f"{args.nodes}-node[{store}]"
        setup = Setup(name, store, args.nodes, urls[store])
        why = unreachable(setup)
        if why:
            print(f"SKIPPING {setup.name}: {why}", flush=True)
        else:
            setups.append(setup)
    return setups


def reexec_in_venv() -> None:
    """Cleanup and probes need the venv's psycopg and redis: run there if not already."""
    if VENV_PY.exists() and Path(sys.prefix).resolve() != VENV_PY.parent.parent.resolve():
        os.execv(VENV_PY, [str(VENV_PY), str(Path(__file__).resolve()), *sys.argv[1:]])


def main(argv: list[str] | None = None) -> int:
    reexec_in_venv()
    args = parse_args(argv)
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    missing = tether_missing(None)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    table = workload_table(args.quick)
    try:
        workloads = [table[name.strip()] for name in args.workloads.split(",") if name.strip()]
    except KeyError as exc:
        print(f"unknown workload {exc}; choose from {', '.join(table)}", file=sys.stderr)
        return 2
    setups = select_setups(args)
    print(
        f"setups: {', '.join(s.name for s in setups)}; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs ({where_nodes_run(args.cpus)}, client on CPU {CLIENT_CPU})",
        flush=True,
    )
    size = data_size_needed(list(table.values()))
    data = ensure_data_file(default_data_path(args.work_dir / "tether-bench", size), size)
    root = Path(tempfile.mkdtemp(prefix="tether-cluster-run-", dir=args.work_dir))
    started = time.monotonic()
    try:
        records = run_all(args, setups, workloads, root, data, timed_run, progress)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    summaries = summarize(records, setups, workloads)
    print_table(summaries, workloads, args.reps, where_nodes_run(args.cpus))
    print(
        f"\ntotal time {time.monotonic() - started:.0f}s"
        + (f"; run dirs kept in {root}" if args.keep else "")
    )
    if args.json:
        doc = {
            "args": {k: v for k, v in vars(args).items() if not isinstance(v, Path)},
            "records": [asdict(r) for r in records],
            "summary": [asdict(s) for s in summaries],
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    failed = [r for r in records if not r.ok]
    if failed:
        shout(f"{len(failed)} run(s) failed; see messages above")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
