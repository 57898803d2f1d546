"""The byte-store contract against every backend in ``backends.BYTE_BACKENDS``, and what
only the filesystem store can show: rename instead of copy, and a full disk."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.contract.byte_contract import (
    ByteStoreContract,
    assert_final,
    pattern,
    read_all,
    write_segment,
)
from tests.contract.faults import FailingSync, FullDevice
from tether.storage import filesystem
from tether.storage.base import ObjectMissing, Piece, StorageError, StorageFull
from tether.storage.filesystem import FilesystemByteStore


class TestByteStores(ByteStoreContract):
    pass


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "bytes"


@pytest.fixture
def store(root: Path) -> FilesystemByteStore:
    return FilesystemByteStore(root)


@pytest.fixture
def full_device(monkeypatch: pytest.MonkeyPatch, root: Path) -> FullDevice:
    return FullDevice(monkeypatch, root, errno.ENOSPC)


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def files(root: Path, upload_id: str) -> list[str]:
    return entries(root / upload_id)


class TestFilesystemByteStore:
    async def test_writeback_starts_at_each_boundary_without_a_flush(
        self, store: FilesystemByteStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A fast body commits (and flushes) only every --commit-period: the writer starts
        writeback itself as the segment crosses each 4 MiB, continued mid-segment too."""
        started: list[int] = []
        monkeypatch.setattr(filesystem, "_start_writeback", lambda fd, at: started.append(at))
        MiB = 1024 * 1024
        writer = await store.open_segment("u", "e1", 0)
        for _ in range(10):
            await writer.write(pattern(MiB))
        await writer.close()
        assert started == [0, 4 * MiB]
        writer = await store.open_segment("u", "e1", 10 * MiB)
        await writer.write(pattern(3 * MiB))
        await writer.close()
        assert started == [0, 4 * MiB, 8 * MiB]

    @pytest.mark.parametrize("always", [False, True])
    async def test_a_close_to_open_file_system_flushes_every_commit(
        self, store: FilesystemByteStore, monkeypatch: pytest.MonkeyPatch, always: bool
    ) -> None:
        """On NFS or SMB another machine sees only what was flushed: a writer there
        fdatasyncs at each flush, durable or not; elsewhere only a durable flush does."""
        synced: list[int] = []
        monkeypatch.setattr(filesystem.os, "fdatasync", synced.append)
        store.flush_always = always
        writer = await store.open_segment("u", "e1", 0)
        await writer.write(b"abc")
        await writer.flush(False)
        assert len(synced) == (1 if always else 0)
        await writer.flush(True)
        assert len(synced) == (2 if always else 1)
        await writer.close()

    def test_the_file_system_type_comes_from_the_innermost_mount(self, root: Path) -> None:
        table = "\n".join(
            [
                "36 35 98:0 / / rw,relatime - ext4 /dev/vda rw",
                "37 36 0:50 / /mnt/up\\040loads rw - nfs4 srv:/export rw,vers=4.2",
                "38 36 0:51 / /mnt/cifs rw - tmpfs tmpfs rw",
                "39 38 0:52 / /mnt/cifs rw - cifs //srv/x rw",
                "40 36 0:53 / /mnt/ceph rw - fuse.ceph-fuse ceph-fuse rw",
            ]
        )
        kinds = {
            "/mnt/up loads/tether": "nfs4",  # (a space is written \040 in the table)
            "/mnt/cifs/a/b": "cifs",  # the later of two mounts on one point
            "/mnt/cifsx": "ext4",  # a longer name, not a path below /mnt/cifs
            "/mnt/ceph/u": "fuse.ceph-fuse",
            "/srv": "ext4",
        }
        for path, kind in kinds.items():
            assert filesystem.filesystem_type(path, table) == kind
        assert {k for k in kinds.values() if k in filesystem.CLOSE_TO_OPEN} == {"nfs4", "cifs"}
        # The real table: the test's own directory is on a local file system.
        assert filesystem.filesystem_type(str(root)) not in filesystem.CLOSE_TO_OPEN
        assert FilesystemByteStore(root).flush_always is False

    async def test_single_piece_assembles_by_rename(
        self, store: FilesystemByteStore, root: Path
    ) -> None:
        data = pattern(500_000)
        await write_segment(store, "u", "e1", data + b"garbage")
        segment = root / "u" / "e1.seg"
        inode = segment.stat().st_ino
        await store.assemble("u", [Piece("u", "e1", 0, len(data))])
        assert not segment.exists()
        final = store.final_path("u")
        assert final.stat().st_ino == inode
        assert final.stat().st_size == len(data)
        assert files(root, "u") == ["data"]
        await assert_final(store, "u", data)

    async def test_several_pieces_leave_only_the_final_object(
        self, store: FilesystemByteStore, root: Path
    ) -> None:
        await write_segment(store, "u", "e1", b"abc")
        await write_segment(store, "u", "e2", b"defXXX")
        await write_segment(store, "u", "e9", b"never committed")
        await store.assemble("u", [Piece("u", "e1", 0, 3), Piece("u", "e2", 0, 3)])
        assert files(root, "u") == ["data"]
        assert store.final_path("u").read_bytes() == b"abcdef"

    async def test_a_piece_not_starting_at_zero_is_copied(
        self, store: FilesystemByteStore, root: Path
    ) -> None:
        await write_segment(store, "u", "e1", b"skipme")
        await store.assemble("u", [Piece("u", "e1", 4, 2)])
        assert files(root, "u") == ["data"]
        assert store.final_path("u").read_bytes() == b"me"

    async def test_another_node_finishing_the_copy_first(
        self, root: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Node B starts copying; node A finishes the whole assembly (and drops the
        segments) before B reads its first piece. B must succeed, not report a loss."""
        a, b = FilesystemByteStore(root), FilesystemByteStore(root)
        await write_segment(a, "u", "e1", b"hello ")
        await write_segment(a, "u", "e2", b"world")
        pieces = [Piece("u", "e1", 0, 6), Piece("u", "e2", 0, 5)]
        real = b._copy_piece

        def copy_after_a(piece: Piece, out_fd: int) -> None:
            if not a.final_path("u").exists():
                a._assemble("u", pieces)
            real(piece, out_fd)

        monkeypatch.setattr(b, "_copy_piece", copy_after_a)
        await b.assemble("u", pieces)
        assert files(root, "u") == ["data"]
        await assert_final(b, "u", b"hello world")

    async def test_another_node_renaming_first(
        self, root: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        a, b = FilesystemByteStore(root), FilesystemByteStore(root)
        await write_segment(a, "u", "e1", b"solo")
        pieces = [Piece("u", "e1", 0, 4)]
        real_rename = os.rename
        raced: list[bool] = []

        def rename_after_a(src: Any, dst: Any) -> None:
            if not raced:
                raced.append(True)
                a._assemble("u", pieces)
            real_rename(src, dst)

        monkeypatch.setattr(os, "rename", rename_after_a)
        await b.assemble("u", pieces)
        assert files(root, "u") == ["data"]
        await assert_final(b, "u", b"solo")

    async def test_stale_writer_after_rename_leaves_the_final_file_alone(self, root: Path) -> None:
        writer_node, assembler = FilesystemByteStore(root), FilesystemByteStore(root)
        stale = await writer_node.open_segment("u", "e1", 0)
        await stale.write(b"committed")
        await assembler.assemble("u", [Piece("u", "e1", 0, 9)])
        await stale.write(b"garbage")
        await stale.close()
        assert assembler.final_path("u").read_bytes() == b"committed"
        assert files(root, "u") == ["data"]

    async def test_a_writer_opening_a_segment_being_renamed_fails(self, root: Path) -> None:
        """The segment was assembled (renamed to ``data``) by another node: a stale writer
        that opens it afterwards must not write into the final object."""
        store = FilesystemByteStore(root)
        await write_segment(store, "u", "e1", b"12345")
        await store.assemble("u", [Piece("u", "e1", 0, 5)])
        with pytest.raises(ObjectMissing):
            await store.open_segment("u", "e1", 5)
        assert files(root, "u") == ["data"]

    async def test_a_segment_has_one_writer_at_a_time(self, root: Path) -> None:
        """Two nodes holding the same epoch (a state store that lost a lease) both continue
        the released tail: the second is refused until the first closes it."""
        first_node, second_node = FilesystemByteStore(root), FilesystemByteStore(root)
        await write_segment(first_node, "u", "e1", b"12345")
        first = await first_node.open_segment("u", "e1", 5)
        with pytest.raises(ObjectMissing):
            await second_node.open_segment("u", "e1", 5)
        await first.write(b"678")
        await first.close()
        second = await second_node.open_segment("u", "e1", 8)
        await second.write(b"9")
        await second.close()
        await second_node.assemble("u", [Piece("u", "e1", 0, 9)])
        await assert_final(second_node, "u", b"123456789")

    async def test_opening_a_segment_of_an_assembled_upload_leaves_nothing(
        self, store: FilesystemByteStore, root: Path
    ) -> None:
        await write_segment(store, "u", "e1", b"abc")
        await store.assemble("u", [Piece("u", "e1", 0, 3)])
        with pytest.raises(ObjectMissing):
            await store.open_segment("u", "e5", 0)
        assert files(root, "u") == ["data"]

    async def test_failed_open_creates_nothing(
        self, store: FilesystemByteStore, root: Path
    ) -> None:
        await write_segment(store, "u", "e1", b"12345")
        with pytest.raises(ObjectMissing):
            await store.open_segment("u", "e2", 3)
        with pytest.raises(ObjectMissing):
            await store.open_segment("u", "e1", 6)
        assert files(root, "u") == ["e1.seg"]
        assert (root / "u" / "e1.seg").read_bytes() == b"12345"

    async def test_delete_removes_the_directory(
        self, store: FilesystemByteStore, root: Path
    ) -> None:
        await write_segment(store, "u", "e1", b"abc")
        await write_segment(store, "u", "e2", b"abc")
        await store.delete("u")
        assert entries(root) == []

    # -- a full disk ---------------------------------------------------------------------

    @pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
    async def test_full_disk_while_writing(
        self,
        store: FilesystemByteStore,
        root: Path,
        monkeypatch: pytest.MonkeyPatch,
        code: int,
    ) -> None:
        device = FullDevice(monkeypatch, root, code)
        before = pattern(100_000)
        writer = await store.open_segment("u", "e1", 0)
        await writer.write(before)
        await writer.flush(True)
        device.fill(room=1000)
        with pytest.raises(StorageFull):
            await writer.write(pattern(5000, 9))
        with pytest.raises(StorageFull):
            await writer.write(b"more")
        await writer.close()
        device.free()
        # The committed bytes are intact; what got in past them is garbage to discard.
        await store.assemble("u", [Piece("u", "e1", 0, len(before))])
        await assert_final(store, "u", before)

    async def test_full_disk_then_resume_in_the_same_segment(
        self, store: FilesystemByteStore, full_device: FullDevice
    ) -> None:
        await write_segment(store, "u", "e1", b"kept")
        full_device.fill(room=2)
        with pytest.raises(StorageFull):
            await write_segment(store, "u", "e1", b"lost", start=4)
        full_device.free()
        await write_segment(store, "u", "e1", b"+resumed", start=4)
        await store.assemble("u", [Piece("u", "e1", 0, 12)])
        await assert_final(store, "u", b"kept+resumed")

    async def test_other_write_errors_are_not_storage_full(
        self, store: FilesystemByteStore, root: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        device = FullDevice(monkeypatch, root, errno.EIO)
        writer = await store.open_segment("u", "e1", 0)
        device.fill()
        with pytest.raises(StorageError) as info:
            await writer.write(b"x")
        assert not isinstance(info.value, StorageFull)
        await writer.close()

    async def test_full_disk_while_assembling(
        self, store: FilesystemByteStore, root: Path, full_device: FullDevice
    ) -> None:
        await write_segment(store, "u", "e1", b"abc")
        await write_segment(store, "u", "e2", b"def")
        pieces = [Piece("u", "e1", 0, 3), Piece("u", "e2", 0, 3)]
        full_device.fill()
        with pytest.raises(StorageFull):
            await store.assemble("u", pieces)
        # No half-made object, no temporary left behind, the segments ready for a retry.
        assert files(root, "u") == ["e1.seg", "e2.seg"]
        full_device.free()
        await store.assemble("u", pieces)
        await assert_final(store, "u", b"abcdef")

    async def test_full_disk_on_open(
        self, store: FilesystemByteStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real_open: Callable[..., int] = os.open

        def full_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & os.O_CREAT:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", full_open)
        with pytest.raises(StorageFull):
            await store.open_segment("u", "e1", 0)

    async def test_a_failed_flush_fails_every_later_flush(
        self, store: FilesystemByteStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Once fdatasync failed, a retry that succeeds proves nothing: the kernel may have
        dropped the pages it could not write. The writer must never report them flushed."""
        sync = FailingSync(monkeypatch, errno.ENOSPC)
        await write_segment(store, "u", "e1", b"flushed", durable=True)
        writer = await store.open_segment("u", "e1", 7)
        await writer.write(b" maybe lost")
        sync.fail(times=1)
        with pytest.raises(StorageFull):
            await writer.flush(True)
        for durable in (True, False, True):
            with pytest.raises(StorageFull):
                await writer.flush(durable)
        await writer.close()
        assert sync.failures == 1
        # A new writer (the next request) starts from the committed length, unaffected.
        await write_segment(store, "u", "e1", b"!", start=7, durable=True)
        await store.assemble("u", [Piece("u", "e1", 0, 8)])
        await assert_final(store, "u", b"flushed!")

    async def test_concurrent_rename_race_many_times(self, root: Path) -> None:
        nodes = [FilesystemByteStore(root) for _ in range(3)]
        for i in range(20):
            upload_id = f"u{i}"
            await write_segment(nodes[0], upload_id, "e1", pattern(10_000, i) + b"junk")
            pieces = [Piece(upload_id, "e1", 0, 10_000)]
            await asyncio.gather(*(n.assemble(upload_id, pieces) for n in nodes))
            assert files(root, upload_id) == ["data"]
            assert await read_all(nodes[1], upload_id, 0, 10_000) == pattern(10_000, i)

    async def test_concatenation_links_the_parts_instead_of_copying(
        self, store: FilesystemByteStore, root: Path
    ) -> None:
        a, b, c = pattern(300_000, 1), pattern(5, 2), pattern(200_000, 3)
        for upload_id, data in (("a", a), ("b", b), ("c", c)):
            await write_segment(store, upload_id, "e1", data)
            await store.assemble(upload_id, [Piece(upload_id, "e1", 0, len(data))])
        pieces = [Piece("a", None, 0, len(a)), Piece("b", None, 0, 5), Piece("c", None, 0, len(c))]
        others = [FilesystemByteStore(root) for _ in range(3)]
        await asyncio.gather(*(node.assemble("abc", pieces) for node in [store, *others]))
        assert files(root, "abc") == ["part-0", "part-1", "part-2", "parts.json"]
        assert (root / "abc" / "part-0").stat().st_ino == store.final_path("a").stat().st_ino
        whole = a + b + c
        await assert_final(store, "abc", whole)
        for start, end in [(0, 1), (299_999, 300_006), (300_004, 300_010), (5, len(whole))]:
            assert await read_all(store, "abc", start, end) == whole[start:end]
        # A part deleted afterwards (terminated, expired) takes nothing from the final.
        await store.delete("b")
        await assert_final(store, "abc", whole)
        await store.assemble("abc", pieces)  # idempotent, even with a part gone
        await store.delete("abc")
        await assert_final(store, "a", a)
