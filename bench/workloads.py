"""Workload definitions and the deterministic payload shared by client and runner.

Every upload's bytes are a slice of one data file made from a seeded
generator, so the expected sha256 of any upload is known without trusting
the server. Upload ``i`` of a workload carries ``data[i*size:(i+1)*size]``,
which gives the 32 concurrent uploads of workload D distinct contents (a
server that mixed them up would fail verification).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

DATA_SEED = 0x7E7E_2024
# randbytes() on one huge int would need the whole payload twice in memory;
# 16 MiB steps keep generation fast (~400 MB/s) and memory flat.
_GEN_STEP = 16 * MiB


@dataclass(frozen=True)
class Workload:
    """One benchmark scenario: ``uploads`` uploads of ``size`` bytes in ``chunk`` PATCHes."""

    name: str
    title: str
    uploads: int
    size: int
    chunk: int
    # The figure the table leads with: "MB/s" for throughput, "req/s" for
    # request-rate workloads where per-request overhead is what we measure.
    metric: str

    @property
    def total_bytes(self) -> int:
        return self.uploads * self.size

    @property
    def patches_per_upload(self) -> int:
        return -(-self.size // self.chunk)

    @property
    def total_patches(self) -> int:
        return self.uploads * self.patches_per_upload

    def slice_of(self, index: int) -> tuple[int, int]:
        """(offset, length) of upload ``index``'s bytes within the data file."""
        return index * self.size, self.size


FULL: dict[str, Workload] = {
    "A": Workload("A", "1 upload of 1 GiB in 8 MiB PATCHes", 1, 1 * GiB, 8 * MiB, "MB/s"),
    "C": Workload(
        "C", "2000 PATCHes of 256 KiB, one connection", 1, 2000 * 256 * KiB, 256 * KiB, "req/s"
    ),
    "D": Workload(
        "D", "32 concurrent uploads of 32 MiB in 1 MiB PATCHes", 32, 32 * MiB, 1 * MiB, "MB/s"
    ),
}

# --quick keeps every code path (including 32-way concurrency) but shrinks
# sizes so a smoke run finishes in well under a minute.
QUICK: dict[str, Workload] = {
    "A": Workload("A", "1 upload of 128 MiB in 8 MiB PATCHes", 1, 128 * MiB, 8 * MiB, "MB/s"),
    "C": Workload(
        "C", "200 PATCHes of 256 KiB, one connection", 1, 200 * 256 * KiB, 256 * KiB, "req/s"
    ),
    "D": Workload(
        "D", "32 concurrent uploads of 2 MiB in 1 MiB PATCHes", 32, 2 * MiB, 1 * MiB, "MB/s"
    ),
}


def workload_table(quick: bool) -> dict[str, Workload]:
    return QUICK if quick else FULL


def data_size_needed(workloads: list[Workload]) -> int:
    return max(w.total_bytes for w in workloads)


def ensure_data_file(path: Path, size: int, seed: int = DATA_SEED) -> Path:
    """Create ``path`` holding ``size`` seeded pseudo-random bytes, unless it already does.

    The file is reused across invocations because generating 1 GiB costs
    a few seconds; its content depends only on (seed, size), both of which
    are in the file name chosen by the caller.
    """
    if path.exists() and path.stat().st_size == size:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".part")
    rng = random.Random(seed)
    with open(tmp, "wb") as out:
        remaining = size
        while remaining > 0:
            step = min(_GEN_STEP, remaining)
            out.write(rng.randbytes(step))
            remaining -= step
    os.replace(tmp, path)
    return path


def default_data_path(root: Path, size: int, seed: int = DATA_SEED) -> Path:
    return root / f"payload-seed{seed:x}-{size}.bin"


def sha256_of_range(path: Path, offset: int, length: int) -> str:
    """sha256 of ``length`` bytes of ``path`` starting at ``offset``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        remaining = length
        while remaining > 0:
            block = f.read(min(8 * MiB, remaining))
            if not block:
                raise ValueError(f"{path} is shorter than {offset + length} bytes")
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


def sha256_of_file(path: Path) -> str:
    return sha256_of_range(path, 0, path.stat().st_size)
