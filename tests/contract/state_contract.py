"""The state-store contract, written once and run against every backend.

``StateStoreContract`` holds the rules of ``tether.state.base``; a test module binds it to
backends by subclassing it next to a ``state_stores`` fixture (see ``conftest.py`` and
``backends.py``). Every rule is checked through the public ``StateStore`` methods only, and
every successful commit is compared with ``apply_commit``, the one definition of a CAS.
"""

from __future__ import annotations

import asyncio
import functools
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from tests.contract.backends import Handles
from tether.state.base import (
    Commit,
    Segment,
    StaleLease,
    StateStore,
    UploadExists,
    UploadRecord,
    apply_commit,
)

States = Handles[StateStore]


def full_record(upload_id: str = "u1", **changes: object) -> UploadRecord:
    """A record with every stored field away from its default."""
    record = UploadRecord(
        id=upload_id,
        length=50 * 2**30 + 7,  # past 32 bits: uploads of many GB
        offset=12,
        metadata=(
            ("filename", "résumé.pdf".encode()),
            ("binary", bytes(range(256))),
            ("empty", b""),
            ("flag", None),
            ("ключ", b"\x00\xff"),
        ),
        partial=True,
        parts=None,
        created_at=1_700_000_000.25,
        expires_at=1_700_086_400.5,
        epoch=7,
        tail="e6",
        tail_epoch=6,
        segments=(Segment("e2", 0, 5), Segment("e6", 3, 7)),
        assembled=True,
        last_client="203.0.113.9",
        last_node="node-b",
        client_switches=3,
        node_switches=2,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def fresh(upload_id: str, **changes: object) -> UploadRecord:
    record = UploadRecord(id=upload_id, length=None, created_at=1.0)
    return replace(record, **changes)  # type: ignore[arg-type]


def grow(record: UploadRecord, n: int, *, release: bool = False, **changes: object) -> Commit:
    """The commit a lease holder of ``record`` makes after writing ``n`` more bytes."""
    name = f"e{record.epoch}"
    segments = record.segments
    if segments and segments[-1].name == name:
        last = segments[-1]
        segments = (*segments[:-1], Segment(name, last.start, last.length + n))
    elif n:
        segments = (*segments, Segment(name, 0, n))
    commit = Commit(
        epoch=record.epoch,
        expected_offset=record.offset,
        offset=record.offset + n,
        segments=segments,
        length=record.length,
        expires_at=record.expires_at,
        release_tail=name if release else None,
        release=release,
    )
    return replace(commit, **changes)  # type: ignore[arg-type]


async def committed(store: StateStore, record: UploadRecord, commit: Commit) -> UploadRecord:
    """Commit, and check the store did exactly what ``apply_commit`` defines."""
    assert await store.commit(record.id, commit) is None
    result = apply_commit(record, commit)
    assert await store.get(record.id) == result
    return result


class StateStoreContract:
    """Subclass in a ``test_*.py`` module where a ``state_stores`` fixture is visible."""

    # -- records -------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "record",
        [
            full_record("partial"),
            full_record("final", partial=False, parts=("a1", "b2", "c3"), assembled=False),
            full_record("final-of-none", partial=False, parts=()),
            UploadRecord(id="defaults", length=None),
            full_record("no-expiry", length=None, expires_at=None, tail=None, metadata=()),
            full_record("empty", length=0, offset=0, segments=()),
        ],
        ids=lambda r: r.id,
    )
    async def test_create_get_roundtrips_every_field(
        self, state_stores: States, record: UploadRecord
    ) -> None:
        store = state_stores.open()
        await store.create(record)
        assert await store.get(record.id) == record

    async def test_get_unknown_is_none(self, state_stores: States) -> None:
        assert await state_stores.open().get("nope") is None

    async def test_create_duplicate_raises_and_keeps_the_first(self, state_stores: States) -> None:
        store = state_stores.open()
        first = full_record("dup")
        await store.create(first)
        with pytest.raises(UploadExists):
            await store.create(fresh("dup", length=5))
        assert await store.get("dup") == first

    async def test_records_are_independent(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("a", length=10))
        await store.create(fresh("b", length=20))
        a = await store.acquire("a", node="n", client=None)
        await store.commit("a", grow(a, 4))
        b = await store.get("b")
        assert b == fresh("b", length=20)

    # -- leases --------------------------------------------------------------------------

    async def test_acquire_bumps_epoch_by_one_and_nothing_else(self, state_stores: States) -> None:
        store = state_stores.open()
        record = full_record("u")
        await store.create(record)
        for expected_epoch in range(8, 13):
            got = await store.acquire("u", node="node-b", client="203.0.113.9")
            assert got == replace(record, epoch=expected_epoch)
            assert await store.get("u") == got

    async def test_acquire_counts_switches_exactly(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        steps: list[tuple[str, str | None, int, int, str | None]] = [
            # node, client, client_switches, node_switches, last_client afterwards
            ("a", None, 0, 0, None),  # first lease: nothing to switch from
            ("a", "c1", 0, 0, "c1"),  # first known client: not a switch
            ("a", None, 0, 0, "c1"),  # unknown client: not a switch, and forgets nothing
            ("a", "c1", 0, 0, "c1"),  # same client, same node
            ("b", "c1", 0, 1, "c1"),  # node switch only
            ("b", "c2", 1, 1, "c2"),  # client switch only
            ("a", "c1", 2, 2, "c1"),  # both
            ("a", None, 2, 2, "c1"),
            ("a", "c1", 2, 2, "c1"),
        ]
        for epoch, (node, client, clients, nodes, last_client) in enumerate(steps, start=1):
            got = await store.acquire("u", node=node, client=client)
            assert (got.epoch, got.client_switches, got.node_switches) == (epoch, clients, nodes)
            assert (got.last_node, got.last_client) == (node, last_client)
            assert await store.get("u") == got

    async def test_acquire_unknown_raises_key_error(self, state_stores: States) -> None:
        with pytest.raises(KeyError):
            await state_stores.open().acquire("nope", node="n", client=None)

    # -- commits -------------------------------------------------------------------------

    async def test_commit_for_current_epoch_and_offset_succeeds(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u", length=100, expires_at=50.0))
        record = await store.acquire("u", node="n", client=None)
        record = await committed(store, record, grow(record, 10, expires_at=60.0))
        record = await committed(store, record, grow(record, 0))
        record = await committed(store, record, grow(record, 90, release=True))
        assert record.complete
        assert record.segments == (Segment("e1", 0, 100),)
        assert record.expires_at == 60.0

    async def test_commit_may_declare_the_length(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        record = await store.acquire("u", node="n", client=None)
        record = await committed(store, record, grow(record, 7, length=7))
        assert record.length == 7 and record.complete

    async def test_commit_of_a_stale_epoch_fails(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        old = await store.acquire("u", node="n", client=None)
        new = await store.acquire("u", node="m", client=None)
        with pytest.raises(StaleLease):
            await store.commit("u", grow(old, 5))
        with pytest.raises(StaleLease):
            await store.commit("u", grow(old, 5, release=True))
        assert await store.get("u") == new
        # A commit from the future is just as wrong.
        with pytest.raises(StaleLease):
            await store.commit("u", grow(new, 5, epoch=new.epoch + 1))
        await committed(store, new, grow(new, 5))

    async def test_commit_with_a_wrong_expected_offset_fails(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        record = await store.acquire("u", node="n", client=None)
        record = await committed(store, record, grow(record, 10))
        for expected in (0, 9, 11):
            with pytest.raises(StaleLease):
                await store.commit(
                    "u", grow(record, 5, expected_offset=expected, offset=expected + 5)
                )
        assert await store.get("u") == record

    async def test_commit_on_a_deleted_or_unknown_upload_fails(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        record = await store.acquire("u", node="n", client=None)
        assert await store.delete("u")
        with pytest.raises(StaleLease):
            await store.commit("u", grow(record, 5))
        assert await store.get("u") is None
        with pytest.raises(StaleLease):
            await store.commit("nope", grow(replace(record, id="nope"), 5))
        assert await store.get("nope") is None

    async def test_commit_of_a_recreated_upload_with_an_old_lease_fails(
        self, state_stores: States
    ) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        old = await store.acquire("u", node="n", client=None)
        await store.delete("u")
        await store.create(fresh("u", epoch=5))
        with pytest.raises(StaleLease):
            await store.commit("u", grow(old, 5))

    async def test_offsets_never_go_back(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u", length=100))
        record = await store.acquire("u", node="n", client=None)
        record = await committed(store, record, grow(record, 10))
        with pytest.raises(ValueError):
            await store.commit("u", grow(record, 0, offset=4))
        with pytest.raises(ValueError):
            await store.commit("u", grow(record, 95))  # past the length
        assert await store.get("u") == record

    async def test_release_sets_tail_and_tail_epoch(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u", tail="old", tail_epoch=0))
        record = await store.acquire("u", node="n", client=None)
        record = await committed(store, record, grow(record, 10))
        assert (record.tail, record.tail_epoch) == ("old", 0)  # a plain commit keeps them
        record = await committed(store, record, grow(record, 5, release=True))
        assert (record.tail, record.tail_epoch) == ("e1", 1)
        record = await store.acquire("u", node="n", client=None)
        record = await committed(store, record, grow(record, 0, release=True, release_tail=None))
        assert (record.tail, record.tail_epoch) == (None, 2)

    async def test_continuable_tail_only_right_after_a_clean_release(
        self, state_stores: States
    ) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        record = await store.acquire("u", node="n", client=None)
        assert record.continuable_tail() is None
        record = await committed(store, record, grow(record, 10, release=True))
        nxt = await store.acquire("u", node="m", client=None)
        assert nxt.continuable_tail() == Segment("e1", 0, 10)
        # The holder continues e1, releases it again, and the next one may continue too.
        cont = Commit(
            epoch=nxt.epoch,
            expected_offset=10,
            offset=15,
            segments=(Segment("e1", 0, 15),),
            length=None,
            expires_at=None,
            release_tail="e1",
            release=True,
        )
        nxt = await committed(store, nxt, cont)
        again = await store.acquire("u", node="n", client=None)
        assert again.continuable_tail() == Segment("e1", 0, 15)
        # An acquire in between kills it: that holder may still be writing.
        killed = await store.acquire("u", node="n", client=None)
        assert killed.continuable_tail() is None
        assert (await store.get("u")) == killed

    async def test_a_released_tail_without_committed_bytes_starts_at_zero(
        self, state_stores: States
    ) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        record = await store.acquire("u", node="n", client=None)
        await committed(store, record, grow(record, 0, release=True, release_tail="e1"))
        nxt = await store.acquire("u", node="n", client=None)
        assert nxt.continuable_tail() == Segment("e1", 0, 0)

    async def test_a_commit_may_clear_the_length_and_the_expiry(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u", length=10, expires_at=5.0))
        record = await store.acquire("u", node="n", client=None)
        record = await committed(store, record, grow(record, 2, length=None, expires_at=None))
        assert (record.length, record.expires_at) == (None, None)
        assert await store.expired(10.0, 10) == []

    # -- expiry, completion, deletion ----------------------------------------------------

    async def test_expire_deletes_only_expired_incomplete_uploads(
        self, state_stores: States
    ) -> None:
        store = state_stores.open()
        now = 1000.0
        doomed = {
            "expired": fresh("expired", length=10, offset=3, expires_at=now - 1),
            "expired-deferred": fresh("expired-deferred", offset=3, expires_at=now - 0.001),
            "expired-empty": fresh("expired-empty", length=10, expires_at=0.0),
        }
        kept = {
            "complete": fresh("complete", length=10, offset=10, expires_at=now - 1),
            "complete-empty": fresh("complete-empty", length=0, expires_at=now - 1),
            "fresh": fresh("fresh", length=10, expires_at=now + 1),
            "at-now": fresh("at-now", length=10, expires_at=now),
            "never": fresh("never", length=10, expires_at=None),
        }
        for record in [*doomed.values(), *kept.values()]:
            await store.create(record)
        assert sorted(await store.expired(now, 100)) == sorted(doomed)
        listed = await store.expired(now, 2)
        assert len(listed) == 2 and set(listed) <= set(doomed)
        for upload_id in kept:
            assert not await store.expire(upload_id, now)
        for upload_id in doomed:
            assert await store.expire(upload_id, now)
            assert not await store.expire(upload_id, now)
            assert await store.get(upload_id) is None
        assert not await store.expire("nope", now)
        for upload_id, record in kept.items():
            assert await store.get(upload_id) == record
        assert await store.expired(now, 100) == []

    async def test_expire_loses_to_a_commit_that_extends_the_expiry(
        self, state_stores: States
    ) -> None:
        store = state_stores.open()
        await store.create(fresh("u", length=10, expires_at=5.0))
        assert await store.expired(10.0, 10) == ["u"]
        record = await store.acquire("u", node="n", client=None)
        await committed(store, record, grow(record, 2, expires_at=20.0))
        assert not await store.expire("u", 10.0)
        assert await store.expired(10.0, 10) == []
        assert (await store.get("u")) is not None

    async def test_expire_loses_to_a_commit_that_completes(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u", length=10, expires_at=5.0))
        record = await store.acquire("u", node="n", client=None)
        await committed(store, record, grow(record, 10))
        assert not await store.expire("u", 10.0)

    async def test_mark_assembled(self, state_stores: States) -> None:
        store = state_stores.open()
        record = full_record("u", assembled=False)
        await store.create(record)
        await store.mark_assembled("u")
        assert await store.get("u") == replace(record, assembled=True)
        await store.mark_assembled("u")
        assert await store.get("u") == replace(record, assembled=True)
        await store.mark_assembled("nope")
        assert await store.get("nope") is None

    async def test_delete(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(full_record("u"))
        await store.create(full_record("v"))
        assert await store.delete("u")
        assert not await store.delete("u")
        assert not await store.delete("nope")
        assert await store.get("u") is None
        with pytest.raises(KeyError):
            await store.acquire("u", node="n", client=None)
        assert await store.get("v") == full_record("v")
        await store.create(fresh("u"))  # the id is free again
        assert await store.get("u") == fresh("u")

    async def test_check(self, state_stores: States) -> None:
        await state_stores.open().check()

    async def test_handles_share_one_truth(self, state_stores: States) -> None:
        one, two = state_stores.open(), state_stores.open()
        await one.create(full_record("u"))
        assert await two.get("u") == full_record("u")
        record = await two.acquire("u", node="n", client=None)
        with pytest.raises(UploadExists):
            await two.create(fresh("u"))
        assert await one.get("u") == record

    # -- concurrency ---------------------------------------------------------------------

    async def test_racing_commits_for_one_epoch_exactly_one_wins(
        self, state_stores: States
    ) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        rng = random.Random(7)
        total = 0
        for _ in range(30):
            record = await store.acquire("u", node="n", client=None)
            sizes = [rng.randint(1, 1000) for _ in range(8)]

            async def attempt(n: int, record: UploadRecord = record) -> int | None:
                await asyncio.sleep(0)
                try:
                    await store.commit("u", grow(record, n))
                except StaleLease:
                    return None
                return n

            wins = [n for n in await asyncio.gather(*map(attempt, sizes)) if n is not None]
            assert len(wins) == 1
            total += wins[0]
        final = await store.get("u")
        assert final is not None and final.offset == total
        assert sum(s.length for s in final.segments) == total

    async def test_racing_leases_on_one_event_loop(self, state_stores: States) -> None:
        store = state_stores.open()
        await store.create(fresh("u"))
        ledger = Ledger()
        workers = [LeaseWorker(store, "u", f"n{i}", seed=i, ledger=ledger) for i in range(12)]
        watcher = asyncio.create_task(watch(store, "u", ledger))
        try:
            await asyncio.gather(*(w.run(leases=25) for w in workers))
        finally:
            ledger.done = True
            await watcher
        await ledger.check_final(store, "u", acquires=12 * 25)

    def test_racing_handles_on_threads(self, state_stores: States) -> None:
        """Separate handles on separate threads: as close to separate processes as a test
        gets without forking."""
        if not state_stores.backend.threadsafe:
            pytest.skip("handles of this backend share one instance and one thread")
        setup = state_stores.open()
        asyncio.run(setup.create(fresh("u")))
        ledger = Ledger()
        threads = 6

        def node(i: int) -> None:
            store = state_stores.open()

            async def run() -> None:
                workers = [
                    LeaseWorker(store, "u", f"t{i}w{j}", seed=100 * i + j, ledger=ledger)
                    for j in range(3)
                ]
                await asyncio.gather(*(w.run(leases=15) for w in workers))

            asyncio.run(run())

        failures = run_threads([functools.partial(node, i) for i in range(threads)])
        assert failures == []
        asyncio.run(ledger.check_final(setup, "u", acquires=threads * 3 * 15))

    def test_racing_commits_on_threads_exactly_one_wins(self, state_stores: States) -> None:
        if not state_stores.backend.threadsafe:
            pytest.skip("handles of this backend share one instance and one thread")
        setup = state_stores.open()
        asyncio.run(setup.create(fresh("u")))
        threads = 6
        stores = [state_stores.open() for _ in range(threads)]
        total = 0
        lock = threading.Lock()
        for round_ in range(15):
            record = asyncio.run(setup.acquire("u", node="n", client=None))
            barrier = threading.Barrier(threads)
            wins: list[int] = []

            def attempt(
                i: int,
                record: UploadRecord = record,
                barrier: threading.Barrier = barrier,
                wins: list[int] = wins,
            ) -> None:
                n = 1 + i + record.epoch
                barrier.wait()
                try:
                    asyncio.run(stores[i].commit("u", grow(record, n)))
                except StaleLease:
                    return
                with lock:
                    wins.append(n)

            assert run_threads([functools.partial(attempt, i) for i in range(threads)]) == []
            assert len(wins) == 1, f"round {round_}: {wins}"
            total += wins[0]
        final = asyncio.run(setup.get("u"))
        assert final is not None and final.offset == total


# -- concurrency helpers -----------------------------------------------------------------


@dataclass
class Ledger:
    """What racing lease holders saw, shared across tasks and threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    max_epoch: int = 0
    wins: dict[int, list[int]] = field(default_factory=dict)  # epoch -> committed sizes
    violations: list[str] = field(default_factory=list)
    done: bool = False

    def acquired(self, epoch: int) -> None:
        with self.lock:
            self.max_epoch = max(self.max_epoch, epoch)

    def newest(self) -> int:
        with self.lock:
            return self.max_epoch

    def won(self, epoch: int, n: int, superseded_before: bool) -> None:
        with self.lock:
            self.wins.setdefault(epoch, []).append(n)
            if superseded_before:
                self.violations.append(f"epoch {epoch} committed after a newer lease existed")

    def observe(self, who: str, seen: list[int], offset: int) -> None:
        if seen and offset < seen[-1]:
            with self.lock:
                self.violations.append(f"{who} saw the offset go back: {seen[-1]} -> {offset}")
        seen.append(offset)

    async def check_final(self, store: StateStore, upload_id: str, *, acquires: int) -> None:
        assert self.violations == []
        final = await store.get(upload_id)
        assert final is not None
        assert final.epoch == acquires
        total = sum(sum(sizes) for sizes in self.wins.values())
        assert final.offset == total
        assert sum(s.length for s in final.segments) == total
        # Each epoch's commits form one run of segments, in epoch order.
        names = [s.name for s in final.segments]
        assert names == [f"e{epoch}" for epoch in sorted(self.wins) if sum(self.wins[epoch])]


class LeaseWorker:
    """Takes leases and commits a few times under each, like a streaming append does."""

    def __init__(
        self, store: StateStore, upload_id: str, node: str, *, seed: int, ledger: Ledger
    ) -> None:
        self.store = store
        self.upload_id = upload_id
        self.node = node
        self.rng = random.Random(seed)
        self.ledger = ledger
        self.seen: list[int] = []

    async def pause(self) -> None:
        roll = self.rng.random()
        if roll < 0.5:
            await asyncio.sleep(0)
        elif roll < 0.6:
            await asyncio.sleep(self.rng.random() / 1000)

    async def run(self, leases: int) -> None:
        for _ in range(leases):
            record = await self.store.acquire(self.upload_id, node=self.node, client=None)
            self.ledger.acquired(record.epoch)
            self.ledger.observe(self.node, self.seen, record.offset)
            for _ in range(self.rng.randint(1, 4)):
                await self.pause()
                n = self.rng.randint(0, 50)
                superseded = self.ledger.newest() > record.epoch
                commit = grow(record, n)
                try:
                    await self.store.commit(self.upload_id, commit)
                except StaleLease:
                    break
                self.ledger.won(record.epoch, n, superseded)
                record = apply_commit(record, commit)
                self.ledger.observe(self.node, self.seen, record.offset)


async def watch(store: StateStore, upload_id: str, ledger: Ledger) -> None:
    seen: list[int] = []
    while not ledger.done:
        record = await store.get(upload_id)
        assert record is not None
        ledger.observe("watcher", seen, record.offset)
        await asyncio.sleep(0)


def run_threads(targets: list[Callable[[], None]]) -> list[BaseException]:
    """Run each callable on its own thread; return what they raised."""
    failures: list[BaseException] = []
    lock = threading.Lock()

    def wrap(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            with lock:
                failures.append(exc)

    workers = [threading.Thread(target=wrap, args=(t,)) for t in targets]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    return failures
