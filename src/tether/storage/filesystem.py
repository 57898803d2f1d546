"""Byte store on a local or shared directory.

Layout: ``ROOT/<upload id>/<segment>.seg`` while an upload streams, ``ROOT/<upload id>/data``
once it is assembled. An upload written by one writer from start to end has one segment,
and assembly is a rename. A concatenation of finished uploads copies nothing either: its
directory holds a hard link to each part's ``data`` (so deleting a part later keeps the
bytes) and a ``parts.json`` manifest, written last, that reads follow. Nothing here is
process-local: any process that sees ROOT may continue, assemble or read any upload.

On NFS and SMB a client keeps the pages it wrote to itself until it flushes or closes the
file (close-to-open consistency), so another machine reading a segment could find bytes a
commit covers missing. On those file systems every commit first flushes the segment to the
server (``fdatasync``), whatever ``--durability`` says. Local file systems share one page
cache, and CephFS clients hand dirty data over when another client opens the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from tether.storage.base import DirectSource, ObjectMissing, Piece, StorageError, StorageFull

_READ_CHUNK = 256 * 1024
_COPY_CHUNK = 64 * 1024 * 1024


def _os_error(exc: OSError, what: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"{what}: {exc.strerror}")
    return StorageError(f"{what}: {exc}")


class _FileWriter:
    __slots__ = ("_always", "_fd", "_flush_failed", "_path", "_position", "_writeback_from")

    def __init__(self, fd: int, path: str | Path, start: int, *, always: bool = False) -> None:
        self._fd = fd
        self._always = always  # flush even when not durable (a close-to-open file system)
        self._path = path
        self._flush_failed: StorageError | None = None
        self._position = start  # the file offset: every write goes on from here
        self._writeback_from = start

    def _writeback_if_crossed(self) -> None:
        # Writeback starts, without waiting for it, each time the segment crosses a
        # writeback boundary, so the flush that completes the upload finds little left
        # to write (A: 720 -> 780 MB/s). Here, not at commits: a fast body commits only
        # every --commit-period, hundreds of MiB apart.
        if self._position // _WRITEBACK_STEP > self._writeback_from // _WRITEBACK_STEP:
            _start_writeback(self._fd, self._writeback_from // _WRITEBACK_STEP * _WRITEBACK_STEP)
            self._writeback_from = self._position

    async def write(self, data: bytes | memoryview) -> None:
        # Page-cache writes take microseconds; a thread hop per body chunk would cost more
        # than the write itself (measured on workload A).
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                self._position += written
                view = view[written:]
        except OSError as exc:
            raise _os_error(exc, f"write {self._path}") from exc
        self._writeback_if_crossed()

    async def write_from(self, source: DirectSource, count: int) -> int:
        # The kernel moves the bytes from the socket into the page cache: no copy through
        # Python, which halves the CPU a byte costs (bench/run.py, workloads A and D).
        try:
            moved = await source.move_into(self._fd, count)
        except OSError as exc:
            raise _os_error(exc, f"write {self._path}") from exc
        self._position += moved
        self._writeback_if_crossed()
        return moved

    async def flush(self, durable: bool) -> None:
        # Linux reports a failed writeback to fdatasync once, and may drop the pages it
        # could not write: a second call then succeeds though the bytes are lost. So one
        # failure fails every later flush of this writer, and nothing it wrote is committed.
        if self._flush_failed is not None:
            raise self._flush_failed
        if durable or self._always:
            try:
                await asyncio.to_thread(os.fdatasync, self._fd)
            except OSError as exc:
                self._flush_failed = _os_error(exc, f"fdatasync {self._path}")
                raise self._flush_failed from exc

    async def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FilesystemByteStore:
    commit_interval = None
    max_upload_size = None
    direct_writes = True  # its writers take spliced bodies (write_from)

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._root = str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot use {self.root} for uploads: {exc}") from exc
        self.flush_always = filesystem_type(self._root) in CLOSE_TO_OPEN

    def __repr__(self) -> str:
        return f"FilesystemByteStore({str(self.root)!r})"

    def _dir(self, upload_id: str) -> Path:
        return self.root / upload_id

    def _segment(self, upload_id: str, segment: str) -> Path:
        return self.root / upload_id / f"{segment}.seg"

    def final_path(self, upload_id: str) -> Path:
        return self.root / upload_id / "data"

    async def open_segment(
        self, upload_id: str, segment: str, start: int, *, origin: int | None = None
    ) -> _FileWriter:
        # Plain strings on this path: pathlib cost ~40 µs a request on workload C.
        directory = f"{self._root}/{upload_id}"
        path = f"{directory}/{segment}.seg"
        # A segment with committed bytes must exist: creating it would only leave a stray
        # file behind (for a stale writer of an upload assembled or deleted since).
        flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_CREAT if start == 0 else 0)
        try:
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:
                if start:
                    raise ObjectMissing(f"{path} is missing; {start} bytes are committed") from None
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory)
                fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise _os_error(exc, f"open {path}") from exc
        try:
            _hold_for_writing(fd, path)
            if os.path.exists(f"{directory}/data"):  # noqa: ASYNC240 - one stat, microseconds
                # Assembled: only a stale writer opens a segment now, and a file it created
                # would outlive the segments assembly dropped (it drops them after this).
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                raise ObjectMissing(f"{upload_id} is assembled; {path} is not needed")
            size = os.fstat(fd).st_size
            if size < start:
                raise ObjectMissing(f"{path} has {size} bytes, {start} are committed")
            if size > start:
                os.ftruncate(fd, start)
            os.lseek(fd, start, os.SEEK_SET)
        except OSError as exc:
            os.close(fd)
            raise _os_error(exc, f"open {path}") from exc
        except BaseException:
            os.close(fd)
            raise
        return _FileWriter(fd, path, start, always=self.flush_always)

    async def assemble(self, upload_id: str, pieces: Sequence[Piece]) -> None:
        await asyncio.to_thread(self._assemble, upload_id, list(pieces))

    def _assemble(self, upload_id: str, pieces: list[Piece]) -> None:
        final = self.final_path(upload_id)
        total = sum(p.length for p in pieces)
        if _has_size(final, total) or self._linked_size(upload_id) == total:
            self._drop_segments(upload_id)
            return
        final.parent.mkdir(exist_ok=True)
        if len(pieces) > 1 and all(self._is_whole_final(p, upload_id) for p in pieces):
            self._link_parts(upload_id, pieces)
            return
        if (
            len(pieces) == 1
            and pieces[0].upload_id == upload_id
            and pieces[0].segment is not None
            and pieces[0].start == 0
        ) and self._rename_single(upload_id, pieces[0], final):
            return
        tmp = final.with_name(f"data.tmp-{secrets.token_hex(8)}")
        try:
            with open(tmp, "wb") as out:
                for piece in pieces:
                    self._copy_piece(piece, out.fileno())
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except ObjectMissing:
            tmp.unlink(missing_ok=True)
            # Another node finished first and dropped the segments this copy was reading.
            if _has_size(final, total):
                return
            raise
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _os_error(exc, f"assemble {upload_id}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(final.parent)
        self._drop_segments(upload_id)

    def _is_whole_final(self, piece: Piece, upload_id: str) -> bool:
        return (
            piece.segment is None
            and piece.start == 0
            and piece.upload_id != upload_id
            and _has_size(self.final_path(piece.upload_id), piece.length)
        )

    def _manifest(self, upload_id: str) -> Path:
        return self.root / upload_id / _MANIFEST

    def _linked_parts(self, upload_id: str) -> list[tuple[Path, int]] | None:
        """The parts of a concatenation assembled by links, or None."""
        try:
            listed = json.loads(self._manifest(upload_id).read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StorageError(f"{self._manifest(upload_id)} is damaged: {exc}") from exc
        return [(self.root / upload_id / str(name), int(size)) for name, size in listed]

    def _linked_size(self, upload_id: str) -> int | None:
        parts = self._linked_parts(upload_id)
        return None if parts is None else sum(size for _, size in parts)

    def _link_parts(self, upload_id: str, pieces: list[Piece]) -> None:
        directory = self.root / upload_id
        listed = []
        try:
            for index, piece in enumerate(pieces):
                name = f"part-{index}"
                link = directory / name
                source = self.final_path(piece.upload_id)
                with contextlib.suppress(FileNotFoundError):
                    if link.stat().st_ino != source.stat().st_ino:
                        link.unlink()  # left by an earlier attempt with other parts
                with contextlib.suppress(FileExistsError):
                    os.link(source, link)
                listed.append([name, piece.length])
            tmp = directory / f"{_MANIFEST}.tmp-{secrets.token_hex(8)}"
            with open(tmp, "w") as out:
                json.dump(listed, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self._manifest(upload_id))
        except FileNotFoundError as exc:
            raise ObjectMissing(f"a part of {upload_id} is missing: {exc}") from None
        except OSError as exc:
            raise _os_error(exc, f"assemble {upload_id}") from exc
        # The parts were flushed when they completed; the links and manifest are now.
        _fsync_dir(directory)

    def _rename_single(self, upload_id: str, piece: Piece, final: Path) -> bool:
        """Make the one segment the final object by renaming it; False when it must be
        copied instead, because a (superseded) writer still holds it open and could write
        into the final object through its descriptor after the rename."""
        source = self._segment(upload_id, piece.segment or "")
        try:
            fd = os.open(source, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            # Another node assembled it first.
            if _has_size(final, piece.length):
                return True
            raise ObjectMissing(f"{source} is gone and {final} is incomplete") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            # Held through the rename, so no writer can open the segment in between and
            # keep writing into what becomes the final object (see ``_hold_for_writing``).
            if os.fstat(fd).st_size < piece.length:
                raise ObjectMissing(f"{source} is shorter than its committed {piece.length}")
            os.ftruncate(fd, piece.length)
            os.fsync(fd)
            try:
                os.rename(source, final)
            except FileNotFoundError:
                return _has_size(final, piece.length)
        finally:
            os.close(fd)
        _fsync_dir(final.parent)
        self._drop_segments(upload_id)
        return True

    def _copy_piece(self, piece: Piece, out_fd: int) -> None:
        if piece.segment is None:
            source = self.final_path(piece.upload_id)
        else:
            source = self._segment(piece.upload_id, piece.segment)
        try:
            fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectMissing(f"{source} is missing") from None
        try:
            offset, remaining = piece.start, piece.length
            while remaining:
                copied = os.copy_file_range(fd, out_fd, min(remaining, _COPY_CHUNK), offset)
                if copied == 0:
                    raise ObjectMissing(f"{source} ends before its committed range {piece}")
                offset += copied
                remaining -= copied
        finally:
            os.close(fd)

    def _drop_segments(self, upload_id: str) -> None:
        for path in self._dir(upload_id).glob("*.seg"):
            path.unlink(missing_ok=True)

    async def read(self, upload_id: str, start: int, end: int) -> AsyncIterator[bytes]:
        path = self.final_path(upload_id)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            parts = self._linked_parts(upload_id)
            if parts is None:
                raise ObjectMissing(str(path)) from None
            async for chunk in _read_parts(parts, start, end):
                yield chunk
            return
        try:
            position = start
            while position < end:
                data = os.pread(fd, min(_READ_CHUNK, end - position), position)
                if not data:
                    raise ObjectMissing(f"{path} ends at {position}, before {end}")
                position += len(data)
                yield data
        finally:
            os.close(fd)

    async def delete(self, upload_id: str) -> None:
        await asyncio.to_thread(shutil.rmtree, self._dir(upload_id), True)

    async def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")

    async def close(self) -> None:
        return None


_WRITEBACK_STEP = 4 * 1024 * 1024
_MANIFEST = "parts.json"
# File systems whose clients show other machines what they wrote only once it is flushed
# or closed (types as /proc/self/mountinfo names them).
CLOSE_TO_OPEN = frozenset({"nfs", "nfs4", "cifs", "smb3"})


def filesystem_type(path: str, mountinfo: str | None = None) -> str | None:
    """The type of the file system that holds ``path`` (``ext4``, ``nfs4``…), from the
    mount table (``/proc/self/mountinfo`` unless given); None where there is none."""
    if mountinfo is None:
        try:
            with open("/proc/self/mountinfo") as table:
                mountinfo = table.read()
        except OSError:
            return None
    path = os.path.realpath(path)
    found, longest = None, -1
    for line in mountinfo.splitlines():
        mount, separator, rest = line.partition(" - ")
        fields = mount.split()
        if not separator or len(fields) < 5 or not rest.split():
            continue
        point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        # The longest match is the innermost mount; a later line for the same point is a
        # mount on top of it.
        if inside and len(point) >= longest:
            found, longest = rest.split()[0], len(point)
    return found


_OCTAL = re.compile(r"\\([0-7]{3})")


async def _read_parts(parts: list[tuple[Path, int]], start: int, end: int) -> AsyncIterator[bytes]:
    """Bytes ``[start, end)`` of the concatenation of ``parts``."""
    if end > sum(size for _, size in parts):
        raise ObjectMissing(f"the parts end before {end}")
    base = 0
    for path, size in parts:
        lo, hi = max(start, base), min(end, base + size)
        if lo < hi:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                position = lo - base
                while position < hi - base:
                    data = os.pread(fd, min(_READ_CHUNK, hi - base - position), position)
                    if not data:
                        raise ObjectMissing(f"{path} ends at {position}, before {hi - base}")
                    position += len(data)
                    yield data
            finally:
                os.close(fd)
        base += size


def _load_sync_file_range() -> Callable[[int, int], None]:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        call = libc.sync_file_range
    except (OSError, AttributeError):
        return lambda fd, offset: None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    sync_file_range_write = 2  # SYNC_FILE_RANGE_WRITE: start writeback, do not wait

    def start(fd: int, offset: int) -> None:
        call(fd, offset, 0, sync_file_range_write)  # 0: up to the end of the file

    return start


_start_writeback = _load_sync_file_range()


def _hold_for_writing(fd: int, path: str | Path) -> None:
    """Lock an open segment for as long as it is written, and check that ``path`` still
    names it. Assembly renames a segment into the final object only under the same lock,
    so a writer either holds its lock first (and assembly copies the committed range
    instead) or finds its segment renamed away and stops here. The lock is exclusive:
    one lease at a time writes a segment, and if a state store ever handed one epoch out
    twice (a PostgreSQL crash that lost an asynchronous lease), the second holder of a
    continued segment is refused instead of writing over the first one's bytes.

    ``flock`` works across processes on a local disk and, emulated through byte-range
    locks, on NFS (Linux >= 2.6.12); ObjectMissing here only ever reaches a stale writer."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ObjectMissing(f"{path} is being written or assembled") from None
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        raise ObjectMissing(f"{path} was assembled into the final object")


def _has_size(path: Path, size: int) -> bool:
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def open_from_url(url: str, *, max_size: int | None = None) -> FilesystemByteStore:
    from tether.backends import path_from_file_url

    return FilesystemByteStore(path_from_file_url(url))
