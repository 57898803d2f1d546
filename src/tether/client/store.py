"""The resume store: which upload URLs belong to which local files, across restarts.

One small JSON file (``$XDG_CACHE_HOME/tether/uploads.json``, else ``~/.cache/…``), keyed
by a fingerprint of the file (absolute path, size, modification time) and of where and how
it goes (endpoint, protocol, parallelism). Every change is a read-modify-write under an
exclusive ``flock`` and an atomic rename, so several ``tether upload`` processes may share
it. Entries go when their upload finishes or the server says it is gone, and entries older
than ``MAX_AGE`` are dropped on the next write.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MAX_AGE = 30 * 24 * 3600.0


def default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tether" / "uploads.json"


def fingerprint(
    path: str | os.PathLike[str], *, endpoint: str, protocol: str, parallel: int
) -> str:
    resolved = Path(path).resolve()
    stat = resolved.stat()
    text = "\0".join(
        [str(resolved), str(stat.st_size), str(stat.st_mtime_ns), endpoint, protocol, str(parallel)]
    )
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Entry:
    url: str | None = None  # the upload (or, in parallel, the final upload once created)
    parts: list[str | None] = field(default_factory=list)  # partial uploads, in order
    sha256: str | None = None  # the file's digest, so a resume need not read it again
    path: str = ""
    updated: float = 0.0


class ResumeStore:
    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()

    def get(self, key: str) -> Entry | None:
        data = self._read()
        raw = data.get(key)
        if not isinstance(raw, dict):
            return None
        try:
            return Entry(**raw)
        except TypeError:
            return None

    def update(self, key: str, **changes: Any) -> None:
        with self._locked() as data:
            raw = data.get(key)
            entry = Entry(**raw) if isinstance(raw, dict) else Entry()
            for name, value in changes.items():
                setattr(entry, name, value)
            entry.updated = time.time()
            data[key] = asdict(entry)

    def set_part(self, key: str, index: int, url: str, count: int) -> None:
        with self._locked() as data:
            raw = data.get(key)
            entry = Entry(**raw) if isinstance(raw, dict) else Entry()
            parts = list(entry.parts) + [None] * (count - len(entry.parts))
            parts[index] = url
            entry.parts = parts
            entry.updated = time.time()
            data[key] = asdict(entry)

    def forget(self, key: str) -> None:
        with self._locked() as data:
            data.pop(key, None)

    # -- the file --------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self._read()
            yield data
            now = time.time()
            kept = {
                k: v
                for k, v in data.items()
                if isinstance(v, dict) and now - float(v.get("updated", now)) < MAX_AGE
            }
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".uploads-")
            try:
                with os.fdopen(fd, "w") as out:
                    json.dump(kept, out)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise


class NoStore(ResumeStore):
    """``--no-resume``: remembers nothing."""

    def __init__(self) -> None:
        super().__init__(os.devnull)

    def get(self, key: str) -> Entry | None:
        return None

    def update(self, key: str, **changes: Any) -> None:
        return None

    def set_part(self, key: str, index: int, url: str, count: int) -> None:
        return None

    def forget(self, key: str) -> None:
        return None
