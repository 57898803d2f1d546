"""Faults of a local disk, simulated for the filesystem byte store."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest


class FullDevice:
    """Makes writes under ``root`` fail as a full disk would: once ``room`` bytes are used
    up, a short write and then ``code`` on every ``os.write``; server-side copies
    (``copy_file_range``) into ``root`` fail with ``code`` too."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, code: int) -> None:
        self.root = str(root)
        self.code = code
        self.room: int | None = None  # bytes os.write may still put there
        self.copies_fail = False
        real_write = os.write

        def write(fd: int, data: Any) -> int:
            if self.room is None or not self._ours(fd):
                return real_write(fd, data)
            if self.room == 0:
                raise OSError(self.code, os.strerror(self.code))
            n = real_write(fd, bytes(data[: self.room]))
            self.room -= n
            return n

        real_copy = os.copy_file_range

        def copy_file_range(src: int, dst: int, count: int, *args: Any) -> int:
            if self.copies_fail and self._ours(dst):
                raise OSError(self.code, os.strerror(self.code))
            return real_copy(src, dst, count, *args)

        monkeypatch.setattr(os, "write", write)
        monkeypatch.setattr(os, "copy_file_range", copy_file_range)

    def _ours(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self.root)
        except OSError:
            return False

    def fill(self, room: int = 0) -> None:
        self.room = room
        self.copies_fail = True

    def fill_copies(self) -> None:
        """Only server-side copies fail (copy_file_range needs a fresh extent)."""
        self.copies_fail = True

    def free(self) -> None:
        self.room = None
        self.copies_fail = False


class FailingSync:
    """Makes ``fdatasync`` fail ``times`` times with ``code``, then succeed again, as Linux
    does once it has reported (and dropped) pages it could not write back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, code: int = errno.EIO) -> None:
        self.code = code
        self.failures = 0
        self.times = 0
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            if self.failures < self.times:
                self.failures += 1
                raise OSError(self.code, os.strerror(self.code))
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def fail(self, times: int = 1) -> None:
        self.times = self.failures + times
