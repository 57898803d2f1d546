"""A shared file system for tests, as several machines would mount it: CephFS on a
throw-away single-node Ceph cluster (``tests/support/rgw.py``'s ``Gateway`` with a
metadata server and no S3 gateway), mounted once per node by ``ceph-fuse``.

Each mount is its own CephFS client, with its own caches, its own capabilities from the
metadata server and its own locks, as the kernel client of another machine would be;
``flock`` excludes across mounts (the metadata server arbitrates), and hard links and
renames are the file system's. So it tests what a shared directory on NFS would, where a
kernel NFS client cannot be had (none on the development VM).

The binaries come from Debian 12's packages::

    apt-get install -y --no-install-recommends ceph-mon ceph-osd ceph-common ceph-mds ceph-fuse

``cephfs`` is the pytest fixture: a cluster of its own for each test that uses it, with
``NODES`` mounts; it skips, saying how to install them, when the programs or ``/dev/fuse``
are missing, and fails when they are there but do not start.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.rgw import Gateway, missing_binaries

PACKAGES = ("ceph-mon", "ceph-osd", "ceph-common", "ceph-mds", "ceph-fuse")
INSTALL_HINT = (
    "apt-get install -y --no-install-recommends " + " ".join(PACKAGES) + " (Debian 12; "
    "scripts/test does this when run as root)"
)
NODES = 3


@dataclass(frozen=True)
class SharedFS:
    """``mounts``: one mount point per node, each its own client of one file system."""

    mounts: tuple[Path, ...]


# Per test (one test uses it): the cluster and whatever a failed run left in its RAM
# (~11 GiB at a churn run's peak) go before the next test starts.
@pytest.fixture
def cephfs() -> Iterator[SharedFS]:
    missing = missing_binaries(rgw=False, cephfs=True)
    if missing:
        pytest.skip(f"no CephFS: {', '.join(missing)} not found; {INSTALL_HINT}")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("no CephFS: /dev/fuse is missing, so ceph-fuse cannot mount")
    # The mount points live outside the cluster's directory, and the cluster (mounts
    # first) stops before they are removed.
    with (
        tempfile.TemporaryDirectory(prefix="tether-cephfs-", ignore_cleanup_errors=True) as top,
        Gateway(rgw=False, cephfs=True) as cluster,
    ):
        yield SharedFS(tuple(cluster.mount(Path(top) / f"m{i + 1}") for i in range(NODES)))
