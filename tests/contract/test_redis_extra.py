"""What only the Redis state store has: its URL, key layout, expiry index and TTLs,
retried scripts, error mapping and the durable setting. The shared rules are in
``state_contract.py``."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.contract.redis_backend import fresh_redis_url, server_url, unreachable
from tests.contract.state_contract import fresh, grow
from tether.backends import BackendError, open_state
from tether.state.base import StaleLease, StoreUnavailable, apply_commit
from tether.state.redis import RedisStateStore, _Wire, open_from_url

redis_asyncio = pytest.importorskip("redis.asyncio")
rx = pytest.importorskip("redis.exceptions")

DAY = 86_400


@pytest.fixture
def url(tmp_path: Path) -> str:
    return fresh_redis_url(tmp_path)


@pytest.fixture
async def store(url: str) -> AsyncIterator[RedisStateStore]:
    store = open_from_url(url)
    yield store
    await store.close()


@pytest.fixture
async def raw(url: str) -> AsyncIterator[Any]:
    """A plain client on the test server, to look at the keys the store wrote."""
    client = redis_asyncio.Redis.from_url(server_url(), decode_responses=True)
    yield client
    await client.aclose()


# -- URLs --------------------------------------------------------------------------------


def test_url_options_are_checked_when_opening() -> None:
    with pytest.raises(BackendError, match=r"unknown query parameter\(s\) prefx.*known: .*prefix"):
        open_state("redis://:hunter2@localhost/0?prefx=a:")
    with pytest.raises(BackendError, match="socket_timeout") as info:
        open_state("redis://:hunter2@localhost/0?socket_timeout=soon")
    assert "hunter2" not in str(info.value)
    # Options redis-py would only reject when it first connects.
    with pytest.raises(BackendError, match=r"timeout for redis://"):
        open_state("redis://localhost/0?timeout=3")
    with pytest.raises(BackendError, match=r"ssl_check_hostname for redis://"):
        open_state("redis://localhost/0?ssl_check_hostname=false")
    open_state("rediss://localhost/0?ssl_check_hostname=false&socket_timeout=1&prefix=x:")


def test_repr_hides_the_password() -> None:
    store = open_state("rediss://user:hunter2@redis.example:6380/2?prefix=x:")
    assert "hunter2" not in repr(store)
    assert repr(store) == "RedisStateStore('rediss://user:***@redis.example:6380/2?prefix=x:')"


async def test_keys_live_under_the_prefix_only(store: RedisStateStore, url: str, raw: Any) -> None:
    prefix = store.prefix
    assert prefix.startswith("t:") and f"prefix={prefix}" in url
    await store.create(fresh("u", length=10, expires_at=time.time() + 60))
    assert sorted(await raw.keys(f"{prefix}*")) == [f"{prefix}expiry", f"{prefix}upload:u"]
    # Another prefix is another store on the same server.
    other = open_from_url(url.replace(prefix, f"{prefix}other:"))
    try:
        assert await other.get("u") is None
        await other.create(fresh("u"))
    finally:
        await other.close()


def test_default_prefix() -> None:
    assert open_from_url("redis://localhost:6379/0").prefix == "tether:"


# -- expiry index and TTLs ---------------------------------------------------------------


async def test_index_and_ttl_follow_the_record(store: RedisStateStore, raw: Any) -> None:
    key, index = f"{store.prefix}upload:u", f"{store.prefix}expiry"
    expires_at = time.time() + 3600
    await store.create(fresh("u", length=10, expires_at=expires_at))
    assert await raw.zscore(index, "u") == expires_at
    ttl = await raw.ttl(key)
    assert 3600 + DAY - 5 <= ttl <= 3600 + DAY

    record = await store.acquire("u", node="n", client=None)
    commit = grow(record, 4, expires_at=expires_at + 60)
    await store.commit("u", commit)
    record = apply_commit(record, commit)
    assert await raw.zscore(index, "u") == expires_at + 60
    assert await raw.ttl(key) > ttl  # moved with the expiry

    await store.commit("u", grow(record, 6))  # complete: never expires any more
    assert await raw.zscore(index, "u") is None
    assert await raw.ttl(key) == -1


async def test_a_past_expiry_still_gets_a_full_day(store: RedisStateStore, raw: Any) -> None:
    """The backstop TTL counts from Redis's clock when expires_at has passed, so a record
    never vanishes before a reaper could see it."""
    await store.create(fresh("u", length=10, expires_at=5.0))
    assert DAY - 5 <= await raw.ttl(f"{store.prefix}upload:u") <= DAY
    assert await store.expired(10.0, 10) == ["u"]


async def test_uploads_without_expiry_are_neither_indexed_nor_timed(
    store: RedisStateStore, raw: Any
) -> None:
    await store.create(fresh("u", length=10))
    assert await raw.zcard(f"{store.prefix}expiry") == 0
    assert await raw.ttl(f"{store.prefix}upload:u") == -1


async def test_delete_and_expire_clear_the_index(store: RedisStateStore, raw: Any) -> None:
    await store.create(fresh("a", length=10, expires_at=5.0))
    await store.create(fresh("b", length=10, expires_at=5.0))
    assert await store.delete("a")
    assert await store.expire("b", 10.0)
    assert await raw.zcard(f"{store.prefix}expiry") == 0


async def test_a_record_lost_to_its_ttl_is_reported_expired_once(
    store: RedisStateStore, raw: Any
) -> None:
    """The reaper must still learn of it, to delete its bytes."""
    await store.create(fresh("u", length=10, expires_at=5.0))
    await raw.delete(f"{store.prefix}upload:u")  # as the backstop TTL would
    assert await store.expired(10.0, 10) == ["u"]
    assert not await store.expire("u", 4.0)  # not expired yet at that time
    assert await store.expire("u", 10.0)
    assert not await store.expire("u", 10.0)
    assert await store.expired(10.0, 10) == []


async def test_create_over_a_stale_index_entry_replaces_it(
    store: RedisStateStore, raw: Any
) -> None:
    await store.create(fresh("u", length=10, expires_at=5.0))
    await raw.delete(f"{store.prefix}upload:u")
    await store.create(fresh("u", length=10))
    assert await store.expired(10.0, 10) == []


# -- scripts -----------------------------------------------------------------------------


async def test_a_retried_script_finds_its_own_work(
    store: RedisStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py resends a command whose reply was lost; the op token makes that harmless."""
    monkeypatch.setattr(store, "_token", lambda: "same")
    await store.create(fresh("u"))
    await store.create(fresh("u"))  # the create's retry: no UploadExists
    first = await store.acquire("u", node="n", client="c")
    assert await store.acquire("u", node="m", client="d") == first  # no second bump
    await store.commit("u", grow(first, 5))
    await store.commit("u", grow(first, 5))  # no StaleLease
    assert await store.get("u") == apply_commit(first, grow(first, 5))
    monkeypatch.undo()
    with pytest.raises(StaleLease):
        await store.commit("u", grow(first, 5))  # a different call is stale, as ever


async def test_scripts_reload_after_a_script_flush(store: RedisStateStore, raw: Any) -> None:
    await store.create(fresh("u"))
    await raw.script_flush()
    record = await store.acquire("u", node="n", client=None)
    assert record.epoch == 1


async def test_closed_store_refuses(url: str) -> None:
    store = open_from_url(url)
    await store.check()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.get("u")


# -- errors ------------------------------------------------------------------------------


async def test_an_unreachable_server_is_unavailable_with_a_redacted_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    store = open_state(f"redis://:hunter2@127.0.0.1:{port}/0")
    try:
        for call in (store.check(), store.get("u"), store.acquire("u", node="n", client=None)):
            with pytest.raises(StoreUnavailable) as info:
                await call
            message = str(info.value)
            assert f"127.0.0.1:{port}" in message and "hunter2" not in message
    finally:
        await store.close()


# -- durability --------------------------------------------------------------------------


async def test_durable_refuses_a_server_that_does_not_fsync_each_write(url: str, raw: Any) -> None:
    config = await raw.config_get("append*")
    if (config["appendonly"], config["appendfsync"]) == ("yes", "always"):
        pytest.skip("the test server fsyncs every write")
    store = open_from_url(url, durable=True)
    try:
        with pytest.raises(StoreUnavailable, match="appendfsync always"):
            await store.check()
        with pytest.raises(StoreUnavailable, match="appendfsync always"):
            await store.create(fresh("u"))
    finally:
        await store.close()
    assert not await raw.exists(f"{store.prefix}upload:u")


class PrivateServer:
    """A redis-server of our own, in ``directory``, that a test may stop and restart."""

    def __init__(self, directory: Path, *options: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server binary to start a private server")
        with socket.socket() as sock:  # a free port, very likely still free in a moment
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        self.args += ["--dir", str(directory), "--save", "", *options]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        proc = self.proc = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    self.stop()
                    pytest.skip("the private redis-server did not start")
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[PrivateServer]:
    server = PrivateServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fsyncing_server(tmp_path: Path) -> Iterator[str]:
    server = PrivateServer(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    server.start()
    yield server.url
    server.stop()


async def test_a_restarted_server_is_reconnected_and_a_dead_one_is_unavailable(
    private_server: PrivateServer,
) -> None:
    store = open_from_url(private_server.url)
    try:
        await store.create(fresh("u"))
        # Several idle connections, all dead after the restart: none may cost a retry.
        await asyncio.gather(*(store.get(f"x{i}") for i in range(4)))
        private_server.stop()
        private_server.start()  # the pooled connections are dead now: the retry
        assert await store.get("u") is None  # reconnects (no persistence: empty store)
        private_server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{private_server.port}"):
            await store.acquire("u", node="n", client=None)
        assert time.monotonic() - started < 5  # a 503 in seconds, not a hung request
        private_server.start()
        await store.create(fresh("u"))
        assert (await store.acquire("u", node="n", client=None)).epoch == 1
    finally:
        await store.close()


async def test_a_call_cut_off_after_sending_leaves_no_reply_to_the_next(
    private_server: PrivateServer,
) -> None:
    """A request cancelled (or past its deadline) while its command is on the wire must not
    leave that connection to the next call, which would read the late reply as its own."""
    store = open_from_url(private_server.url)
    admin = redis_asyncio.Redis.from_url(private_server.url)
    try:
        assert await store.get("u") is None  # the scripts' connection is open and idle
        await admin.client_pause(500, all=True)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(store.create(fresh("u")), 0.1)
        # Answered once the pause ends; the cut-off create may or may not have run.
        record = await store.get("u")
        assert record is None or record == fresh("u")
        await store.create(fresh("v"))
        assert (await store.acquire("v", node="n", client=None)).epoch == 1
    finally:
        await admin.aclose()
        await store.close()


async def test_epochs_count_on_past_what_a_lua_number_holds(store: RedisStateStore) -> None:
    for epoch in (2**53, 2**53 + 1, 2**62, 10**18 - 1, 10**19 - 1):
        upload_id = f"u{epoch}"
        await store.create(replace(fresh(upload_id), epoch=epoch, node_switches=epoch))
        record = await store.acquire(upload_id, node="n", client=None)
        assert record.epoch == epoch + 1
        record = await store.acquire(upload_id, node="m", client=None)
        assert (record.epoch, record.node_switches) == (epoch + 2, epoch + 1)


# -- the wire --------------------------------------------------------------------------


def _wires(store: RedisStateStore) -> list[object]:
    return [conn for link in store._links.values() for conn in link.connections._open]


def test_scripts_run_over_a_wire_on_either_event_loop(url: str) -> None:
    """redis-py opens each connection; its socket is then read by a _Wire, on asyncio's
    loop and on uvloop's (whose transports are no asyncio.Transport)."""
    import uvloop

    async def run(upload_id: str) -> list[object]:
        store = open_from_url(url)
        try:
            await store.create(fresh(upload_id))
            record = await store.acquire(upload_id, node="n", client=None)
            commit = grow(record, 5)
            await store.commit(upload_id, commit)
            assert await store.get(upload_id) == apply_commit(record, commit)
            # RESP2, where nothing arrives unasked (redis-py's own default is RESP3)
            link = next(iter(store._links.values()))
            assert "resp=2" in (await link.connections.call("CLIENT", "INFO")).split()
            return _wires(store)
        finally:
            await store.close()

    for runner in (asyncio.run, uvloop.run):
        wires = runner(run(runner.__module__))
        assert wires and all(isinstance(conn, _Wire) for conn in wires), runner


async def test_resp3_runs_through_redis_py(tmp_path: Path) -> None:
    """RESP3 may push messages unasked, which only redis-py's reader expects: no wire."""
    store = open_from_url(fresh_redis_url(tmp_path) + "&protocol=3")
    try:
        await store.create(fresh("u", length=9))
        record = await store.acquire("u", node="n", client=None)
        assert record.tail is None and record.last_client is None
        commit = grow(record, 5)
        await store.commit("u", commit)
        assert await store.get("u") == apply_commit(record, commit)
        assert _wires(store) and not any(isinstance(c, _Wire) for c in _wires(store))
    finally:
        await store.close()


async def test_a_reply_past_its_deadline_is_unavailable_and_the_next_call_works(
    private_server: PrivateServer,
) -> None:
    store = open_from_url(private_server.url + "?socket_timeout=0.2")
    admin = redis_asyncio.Redis.from_url(private_server.url)
    try:
        await store.create(fresh("u"))
        await admin.client_pause(2000, all=True)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"Timeout (reading from|connecting to) Redis"):
            await store.acquire("u", node="n", client=None)
        assert time.monotonic() - started < 1.9  # three tries of 0.2 s and the backoff
        await admin.client_unpause()
        # The timed-out tries may have run late; they share one op token, so together
        # they bumped the epoch at most once.
        record = await store.acquire("u", node="n", client=None)
        assert record.epoch in (1, 2)
    finally:
        await admin.aclose()
        await store.close()


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def abort(self) -> None:
        self.aborted = True


async def test_a_wire_out_of_step_is_dropped() -> None:
    """A reply nobody waits for, or two replies to one command, or bytes hiredis cannot
    read: the connection is dropped and its waiter (if any) fails, never answered wrong."""
    for data in (b"+OK\r\n+OK\r\n", b"?garbage\r\n"):
        transport = _Transport()
        wire = _Wire(object(), transport)  # type: ignore[arg-type]
        call = asyncio.ensure_future(wire.call(b"PING", None))
        await asyncio.sleep(0)
        wire.data_received(data)
        with pytest.raises(rx.ConnectionError):
            await call
        assert transport.aborted and wire.lost
        with pytest.raises(rx.ConnectionError):
            await wire.call(b"PING", None)
    transport = _Transport()
    wire = _Wire(object(), transport)  # type: ignore[arg-type]
    wire.data_received(b"+OK\r\n")  # unasked
    assert transport.aborted
    # A reply followed by the start of another: the rest would answer the next call.
    transport = _Transport()
    wire = _Wire(object(), transport)  # type: ignore[arg-type]
    call = asyncio.ensure_future(wire.call(b"PING", None))
    await asyncio.sleep(0)
    wire.data_received(b"+OK\r\n$5\r\nst")
    with pytest.raises(rx.ConnectionError):
        await call
    assert transport.aborted


async def test_a_wire_past_its_deadline_fails_the_call() -> None:
    transport = _Transport()
    wire = _Wire(object(), transport)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(rx.TimeoutError, match="Timeout reading from Redis"):
        await wire.call(b"PING", started + 0.05)
    assert loop.time() - started >= 0.05


async def test_a_wire_reads_a_reply_in_pieces_and_maps_errors() -> None:
    transport = _Transport()
    wire = _Wire(object(), transport)  # type: ignore[arg-type]
    call = asyncio.ensure_future(wire.call(b"X", None))
    await asyncio.sleep(0)
    for piece in (b"*2\r\n$1\r", b"\na\r\n", b"$-1\r\n"):
        wire.data_received(piece)
    assert await call == ["a", None]
    call = asyncio.ensure_future(wire.call(b"X", None))
    await asyncio.sleep(0)
    wire.data_received(b"-NOSCRIPT No matching script.\r\n")
    with pytest.raises(rx.NoScriptError):
        await call
    assert not transport.aborted and transport.written == [b"X", b"X"]


async def test_durable_works_on_a_server_that_fsyncs_each_write(fsyncing_server: str) -> None:
    store = open_from_url(fsyncing_server, durable=True)
    try:
        await store.check()
        await store.create(fresh("u", length=3))
        record = await store.acquire("u", node="n", client=None)
        commit = grow(record, 3)
        await store.commit("u", commit)
        assert await store.get("u") == apply_commit(record, commit)
    finally:
        await store.close()


def test_unreachable_reason_names_the_url_and_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if unreachable() is not None:
        pytest.skip("the test server itself is unreachable")
    unreachable.cache_clear()
    monkeypatch.setenv("TETHER_TEST_REDIS_URL", "redis://:hunter2@127.0.0.1:1/0")
    try:
        reason = unreachable()
        assert reason is not None
        assert "127.0.0.1:1" in reason and "TETHER_TEST_REDIS_URL" in reason
        assert "hunter2" not in reason
    finally:
        unreachable.cache_clear()
        monkeypatch.undo()
        assert unreachable() is None
