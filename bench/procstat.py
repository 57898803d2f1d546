"""CPU time and memory of a server process tree, read from /proc.

CPU: utime+stime of the server and of every live descendant, plus the
cutime+cstime the server has collected from children it reaped, so worker
processes count whether they are still running or already gone. /proc
stat values include all threads (e.g. Node's libuv pool doing file I/O).

Memory: a background thread samples the summed VmRSS of the tree every
20 ms; the peak is also checked against the kernel's VmHWM of the main
process, which catches spikes shorter than the sampling interval.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # comm (field 2) may contain spaces and parentheses; split after its last ')'.
    # The result starts at field 3 (state), so field N is at index N - 3.
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> list[int]:
    """All live descendants of ``root`` (this kernel has no /proc/PID/task/*/children)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root``, its live descendants and its reaped children."""
    fields = _stat_fields(root)
    if fields is None:
        raise ProcessLookupError(root)
    # Fields 14-17: utime, stime, cutime, cstime (in clock ticks).
    ticks = sum(int(f) for f in fields[11:15])
    for pid in descendants(root):
        sub = _stat_fields(pid)
        if sub is not None:
            ticks += int(sub[11]) + int(sub[12])
    return ticks / CLK_TCK


def _rss_kib(pid: int) -> int:
    try:
        statm = Path(f"/proc/{pid}/statm").read_text().split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(statm[1]) * PAGE_KIB


def hwm_kib(pid: int) -> int:
    """The kernel-tracked peak RSS of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


class RssSampler:
    """Samples the tree's summed RSS in a thread until stopped; ``peak_kib`` is the maximum."""

    def __init__(self, root: int, interval: float = 0.02) -> None:
        self.root = root
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        # Descendants are rescanned only now and then: a full /proc scan
        # every 20 ms would cost more than the reading it serves.
        self._pids: list[int] = [root]
        self._rescan_every = 25

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, hwm_kib(self.root))

    def _run(self) -> None:
        tick = 0
        while not self._stop.is_set():
            if tick % self._rescan_every == 0:
                self._pids = [self.root, *descendants(self.root)]
            self.peak_kib = max(self.peak_kib, sum(_rss_kib(pid) for pid in self._pids))
            tick += 1
            self._stop.wait(self.interval)


def busy_seconds(cpu: int) -> float:
    """user+nice+system time spent on one core so far, whoever ran there.

    Minus the server's own CPU time over a run, this is what other
    processes took from the server's core: on a shared machine, the
    clearest sign that a figure is polluted.
    """
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] == f"cpu{cpu}":
            return (int(fields[1]) + int(fields[2]) + int(fields[3])) / CLK_TCK
    raise ValueError(f"cpu{cpu} not in /proc/stat")


def steal_seconds(cpus: tuple[int, ...]) -> float:
    """Time the hypervisor took from ``cpus`` so far (the 'steal' column of /proc/stat).

    A run during which the VM host stole a noticeable share of the server's
    or client's core is slower for reasons that have nothing to do with
    the server, so run.py reports it next to the figure.
    """
    total = 0
    wanted = {f"cpu{n}" for n in cpus}
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            total += int(fields[8])
    return total / CLK_TCK


def wait_for_quiet(
    cpus: tuple[int, ...], limit: float, window: float = 0.5, busy_max: float = 0.1
) -> bool:
    """Wait up to ``limit`` s for a ``window`` in which each of ``cpus`` is < ``busy_max`` busy.

    On a shared machine (a test suite, another server) a run started in
    the middle of someone else's burst measures the burst; waiting for a
    quiet moment first removes most of that noise. Returns False if the
    machine never went quiet, so the caller can say so.
    """
    deadline = time.monotonic() + limit
    while True:
        before = [busy_seconds(c) for c in cpus]
        time.sleep(window)
        after = [busy_seconds(c) for c in cpus]
        if all(b - a < busy_max * window for a, b in zip(before, after, strict=True)):
            return True
        if time.monotonic() >= deadline:
            return False
