"""The client's own overhead: ``tether upload`` next to the benchmark's bare HTTP client.

    python bench/upload_client.py [--reps 5] [--size 1GiB]

Each repetition uploads the same file (1 GiB, 8 MiB chunks) to a fresh ``tether serve``
(SQLite state, pinned to CPU 0) with each client (pinned to CPU 1), interleaved, page cache
warmed alike, every stored copy checked by sha256:

- ``bare``: ``bench/client.py`` workload A (raw sockets, ``sendfile``);
- ``tether upload``: the defaults (8 MiB chunks, each with its crc32c);
- ``tether upload --parallel 4``: four partial uploads at once, joined by concatenation;
- both again with ``--digest`` (the file's sha256 sent as metadata: one more pass over the
  file, before the upload or, in parallel, alongside it, on the same pinned core).

It prints the median MB/s of each and its ratio to ``bare``. Times are the clients' own
(from the first request to the last answer), so interpreter start-up is not counted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from run import warm_page_cache
from servers import (
    BENCH,
    CLIENT_CPU,
    RunningServer,
    free_port,
    pinned,
    python_for_servers,
    sha256_via_get,
    tether_spec,
)
from workloads import MiB, default_data_path, ensure_data_file, sha256_of_file

CHUNK = "8MiB"
VARIANTS: dict[str, list[str]] = {
    "tether upload": [],
    "tether upload --parallel 4": ["--parallel", "4"],
    "tether upload --digest": ["--digest"],
    "tether upload --parallel 4 --digest": ["--parallel", "4", "--digest"],
}


def upload_with_tether(url: str, data: Path, extra: list[str]) -> tuple[float, str]:
    argv = [
        *pinned(CLIENT_CPU, 0),
        python_for_servers(),
        "-m",
        "tether.cli",
        "upload",
        str(data),
        "--url",
        url,
        "--json",
        "--no-resume",
        "--chunk-size",
        CHUNK,
        *extra,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tether upload failed: {done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    return float(report["seconds"]), str(report["url"])


def upload_with_bare(url: str, data: Path, out: Path) -> tuple[float, str]:
    argv = [
        *pinned(CLIENT_CPU, 0),
        python_for_servers(),
        str(BENCH / "client.py"),
        "--url",
        url,
        "--workload",
        "A",
        "--data",
        str(data),
        "--json",
        str(out),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"bare client failed: {done.stderr[-2000:]}")
    report = json.loads(out.read_text())
    return float(report["wall_s"]), str(report["uploads"][0]["url"])


def one_run(name: str, data: Path, size: int, digest: str, root: Path) -> float:
    run_dir = Path(tempfile.mkdtemp(dir=root))
    (run_dir / "data").mkdir()
    warm_page_cache(run_dir, size)
    server = RunningServer(
        tether_spec("process", None, "/files/"),
        free_port(),
        run_dir / "data",
        run_dir / "server.log",
    )
    try:
        server.start()
        server.wait_ready()
        if name == "bare":
            seconds, url = upload_with_bare(server.base_url, data, run_dir / "bare.json")
        else:
            seconds, url = upload_with_tether(server.base_url, data, VARIANTS[name])
        fetched = sha256_via_get(f"http://127.0.0.1:{server.port}/files/{url.rsplit('/', 1)[1]}")
        if fetched is None or fetched[0] != digest:
            raise RuntimeError(f"{name}: stored bytes differ from the source")
        return size / seconds / 1e6
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024 * MiB, help="bytes (default 1 GiB)")
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "tether-bench")
    args = parser.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    data = ensure_data_file(default_data_path(args.root, args.size), args.size)
    digest = sha256_of_file(data)
    names = ["bare", *VARIANTS]
    rates: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(args.reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            rate = one_run(name, data, args.size, digest, args.root)
            rates[name].append(rate)
            print(f"rep {rep + 1} {name:28} {rate:7.0f} MB/s", flush=True)
    bare = statistics.median(rates["bare"])
    print(f"\n{args.size // MiB} MiB in {CHUNK} chunks, medians of {args.reps}:")
    for name in names:
        median = statistics.median(rates[name])
        print(f"  {name:28} {median:7.0f} MB/s  {median / bare:5.2f}x bare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
