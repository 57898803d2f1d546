"""Redis state store: for many nodes sharing one Redis (``redis://`` or ``rediss://``).

URL: ``redis://[[user]:password@]host[:port][/db][?prefix=tether:&<redis-py options>]``.
``prefix`` (default ``tether:``) is tether's own and starts every key; the other query
options are redis-py's (``socket_timeout``, ``max_connections``, ``ssl_check_hostname``…).
Anything else, and options redis-py would only reject on its first connection
(``timeout``; ``ssl_*`` without ``rediss://``), raise ``BackendError`` when the URL is
opened, so a typo never passes silently. Default timeouts: 2 s to connect, 5 s for a reply.

**Layout.** One hash per upload, ``{prefix}upload:{id}``, one field per record field (a
field is absent where the record holds ``None``), plus ``op``, the token of the last
create/acquire/commit (see *Retries*). One sorted set, ``{prefix}expiry``, holds the ids of
incomplete uploads that have an ``expires_at``, scored by it: ``expired()`` is one
``ZRANGEBYSCORE … LIMIT``, never a ``KEYS``/``SCAN``.

**Atomicity.** Every operation that changes anything is one Lua script, so Redis runs it
without interleaving (the pattern of redis-py's lock release): ``acquire`` bumps the epoch,
``commit`` compares epoch and offset and writes the new progress, and both keep the expiry
index and the key's TTL in step in the same script. ``check_commit`` runs in Python before
the script, so a commit that is a caller's bug changes nothing. Offsets and epochs are
compared as the decimal strings tether wrote, so they are exact at any size; expiry
times are compared as doubles parsed from ``repr(float)``, exact as well. ``get`` and
``acquire`` hand a record back as ``HMGET`` of its fields in a fixed order, a flat array
that hiredis parses in C and Python unpacks by position: no JSON document and no dict per
reply (an earlier ``cjson.encode(HGETALL)`` spent a third of an acquire+commit pair's
client CPU decoding). ``commit`` hands back only ``1``: the lease holder knows the record
it leaves.

**TTL as a backstop, not as the expiry.** An incomplete upload's key also carries a Redis
TTL: ``max(expires_at, Redis's now) + 1 day``. The reaper (``expired``/``expire``) stays
the way uploads expire, because only it also deletes their bytes, and because its check
runs atomically against commits that extend the expiry; the TTL only bounds the memory an
upload can hold when no reaper runs. It is a day late so that it never races the reaper or
a commit (node clocks and Redis's clock may disagree, reapers may lag). If it does fire,
the id stays in the expiry index and ``expire`` then reports it expired once, so the
reaper still deletes its bytes. A complete upload, or one without ``expires_at``, has no
TTL (``PERSIST``): tether never expires it, and losing its record would lose an upload
that was acknowledged.

**Retries.** redis-py retries a command twice on connection errors and timeouts (short
backoff). A command can have run even though its reply was lost, so each create, acquire
and commit carries a unique token stored in ``op``: a retry that finds its own token
knows it already ran and answers as if it just had, instead of failing with ``UploadExists`` or
``StaleLease`` or bumping the epoch twice (if another operation came in between, the
retry fails safe: ``UploadExists``, ``StaleLease``, or one more epoch). ``delete`` and
``expire`` may answer ``False`` after such a retry: the record is gone either way, but a
reaper then leaves that upload's bytes behind. When retries run out the
store raises ``StoreUnavailable`` (503), and the client's resume asks for the truth.

**Durability.** Redis decides it with its own configuration; tether adds no command per
write:

- ``durable=False`` (``--durability process``): a change is acknowledged once Redis has
  applied it in memory. It survives any tether process crash; whether it survives a Redis
  crash is the server's ``appendonly``/``appendfsync`` setting (no persistence: a Redis
  restart loses every upload; ``appendfsync everysec``: up to a second).
- ``durable=True`` (``--durability machine``): the store refuses to serve (``check()`` and
  the first operation of each connection pool raise ``StoreUnavailable``) unless Redis
  reports ``appendonly yes`` and ``appendfsync always``, with which Redis writes and fsyncs
  the AOF before it replies, so an acknowledged change survives a machine crash. A server
  that hides ``CONFIG`` cannot be verified and is refused too. (Redis 7.2's ``WAITAOF``
  would check each write instead; this store targets Redis 7.0.)

Replication is asynchronous either way: tether sends no ``WAIT``, so a failover to a
replica may lose the latest acknowledged changes. Redis must run with
``maxmemory-policy noeviction``: an eviction policy would drop upload records, the only
truth about acknowledged bytes. Redis Cluster is not supported (each script touches the
upload's key and the shared expiry index).

**Event loops.** ``open_from_url`` is synchronous and a handle may be used from several
threads, each with its own loop (as separate nodes in the contract tests are), or from
several ``asyncio.run`` calls in turn. Each loop gets its own client and connection pool,
created on first use inside that loop; a watcher task closes it when the loop shuts down
(``asyncio.run`` and ``asyncio.Runner`` cancel remaining tasks then), and ``close()``
closes them all. A loop closed without cancelling its tasks leaks its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import math
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis import exceptions as rx
from redis._parsers.base import BaseParser as _BaseParser
from redis.asyncio.connection import (
    URL_QUERY_ARGUMENT_PARSERS,
    AbstractConnection,
    ConnectionPool,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff

try:  # installed with the redis extra; packs a command in C, several times faster
    import hiredis as _hiredis
except ImportError:  # pragma: no cover - redis-py packs commands then
    _hiredis = None  # type: ignore[assignment]

from tether.backends import BackendError, redact
from tether.state.base import (
    Commit,
    StaleLease,
    StoreUnavailable,
    UploadExists,
    UploadRecord,
    check_commit,
    metadata_from_json,
    metadata_to_json,
    segments_from_json,
    segments_to_json,
)

DEFAULT_PREFIX = "tether:"
TETHER_PARAMS = frozenset({"prefix"})

# A dead server must turn into a 503 within seconds, not hang a request: connect and reply
# timeouts (overridable in the URL), and two quick retries for a pooled connection the
# server has dropped (idle timeout, restart).
_CONNECT_TIMEOUT = 2.0
_REPLY_TIMEOUT = 5.0
_RETRIES = 2
_TTL_MARGIN_MS = 86_400_000  # the backstop TTL's delay past expires_at, see the docstring

# What a script call retries (redis-py's own client retries the same two), and how long
# it waits before each retry.
_RETRIED: tuple[type[BaseException], ...] = (rx.ConnectionError, rx.TimeoutError, TimeoutError)
_BACKOFF = ExponentialWithJitterBackoff(cap=0.5, base=0.05)

# Errors that mean "cannot serve now, retry later", as opposed to a bug in a script.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    rx.ConnectionError,  # also authentication, LOADING, too many connections
    rx.TimeoutError,
    rx.ReadOnlyError,  # a replica, e.g. mid-failover
    rx.OutOfMemoryError,  # maxmemory reached with noeviction
    rx.TryAgainError,
    rx.ClusterDownError,  # also MASTERDOWN
)

# The fields a script hands back, in this order: HMGET's flat array, which hiredis parses
# in C (nil where the record has none).
_RECORD_FIELDS = (
    "length",
    "offset",
    "metadata",
    "partial",
    "parts",
    "created_at",
    "expires_at",
    "epoch",
    "tail",
    "tail_epoch",
    "segments",
    "assembled",
    "last_client",
    "last_node",
    "client_switches",
    "node_switches",
)
# ``add`` appends a field and its value to the list an HSET (or an HDEL) will take.
_ADD_LUA = """
local function add(t, name, value)
  t[#t + 1] = name
  t[#t + 1] = value
end
"""

# ``record`` reads all of them (and ``op``) in one HMGET; ``F`` maps a name to its place
# in that array; ``change`` writes fields with one HSET, patching the array the script
# hands back, so a script reads the hash once and writes it once.
_RECORD_LUA = (
    "local F = {"
    + ", ".join(f"{name} = {i}" for i, name in enumerate((*_RECORD_FIELDS, "op"), start=1))
    + "}\n"
    + f"""
local function record(key)
  return redis.call('HMGET', key, {", ".join(repr(f) for f in (*_RECORD_FIELDS, "op"))})
end
"""
    + """
local function change(key, r, set)
  redis.call('HSET', key, unpack(set))
  for i = 1, #set, 2 do r[F[set[i]]] = set[i + 1] end
end

local function plus_one(value)
  if #value < 15 then return string.format('%d', tonumber(value) + 1) end
  -- Past what a Lua number holds exactly: add one to the decimal digits themselves.
  local i = #value
  while i > 0 and value:sub(i, i) == '9' do i = i - 1 end
  if i == 0 then return '1' .. string.rep('0', #value) end
  return value:sub(1, i - 1) .. string.char(value:byte(i) + 1) .. string.rep('0', #value - i)
end
"""
)

# An upload's place in the expiry index and its backstop TTL (see the module docstring):
# both while it is incomplete and has an expiry (score != ''), neither otherwise.
_INDEX_LUA = """
local function index(key, zkey, id, score, margin)
  if score == '' then
    redis.call('ZREM', zkey, id)
    redis.call('PERSIST', key)
  else
    redis.call('ZADD', zkey, score, id)
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    local at = math.max(tonumber(score) * 1000, now) + margin
    if at > 9007199254740991 then at = 9007199254740991 end
    redis.call('PEXPIREAT', key, string.format('%.0f', at))
  end
end
"""

# KEYS: upload, expiry. ARGV: id, token, score ('' = not indexed), margin, field, value, …
# Returns 1 when created (or already created by this very call, retried), 0 if taken.
_CREATE_LUA = (
    _INDEX_LUA
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'op') == ARGV[2] then return 1 end
  return 0
end
redis.call('HSET', KEYS[1], 'op', ARGV[2], unpack(ARGV, 5))
index(KEYS[1], KEYS[2], ARGV[1], ARGV[3], tonumber(ARGV[4]))
return 1
"""
)

# KEYS: upload. ARGV: token, node, has_client ('1'/'0'), client.
# Returns the record's fields after the lease, or nil if there is no such upload.
_ACQUIRE_LUA = (
    _RECORD_LUA
    + _ADD_LUA
    + """
local r = record(KEYS[1])
if not r[F.epoch] then return false end
if r[F.op] ~= ARGV[1] then
  local set = {'epoch', plus_one(r[F.epoch]), 'last_node', ARGV[2], 'op', ARGV[1]}
  if r[F.last_node] and r[F.last_node] ~= ARGV[2] then
    add(set, 'node_switches', plus_one(r[F.node_switches]))
  end
  if ARGV[3] == '1' then
    if r[F.last_client] and r[F.last_client] ~= ARGV[4] then
      add(set, 'client_switches', plus_one(r[F.client_switches]))
    end
    add(set, 'last_client', ARGV[4])
  end
  change(KEYS[1], r, set)
end
return r
"""
)

# KEYS: upload, expiry. ARGV: id, token, epoch, expected offset, offset, segments,
# length ('' = none), expires_at ('' = none), score ('' = not indexed), margin,
# release ('1'/'0'), has_tail ('1'/'0'), tail.
# Returns 1, or nil if epoch or offset moved. It reads only the fields it compares or may
# delete: the lease holder knows the record after its own commit (``apply_commit``).
_COMMIT_LUA = (
    _INDEX_LUA
    + _ADD_LUA
    + """
-- A field set to value, or deleted where value is '' and the hash has the field.
local function put(set, del, present, name, value)
  if value ~= '' then add(set, name, value) elseif present then del[#del + 1] = name end
end
local r = redis.call('HMGET', KEYS[1], 'epoch', 'offset', 'op', 'length', 'expires_at', 'tail')
if r[1] ~= ARGV[3] or r[2] ~= ARGV[4] then
  if r[3] and r[3] == ARGV[2] then return 1 end
  return false
end
local set = {'offset', ARGV[5], 'segments', ARGV[6], 'op', ARGV[2]}
local del = {}
put(set, del, r[4], 'length', ARGV[7])
put(set, del, r[5], 'expires_at', ARGV[8])
if ARGV[11] == '1' then
  add(set, 'tail_epoch', r[1])
  if ARGV[12] == '1' then add(set, 'tail', ARGV[13]) elseif r[6] then del[#del + 1] = 'tail' end
end
redis.call('HSET', KEYS[1], unpack(set))
if #del > 0 then redis.call('HDEL', KEYS[1], unpack(del)) end
index(KEYS[1], KEYS[2], ARGV[1], ARGV[9], tonumber(ARGV[10]))
return 1
"""
)

# KEYS: upload. Returns the record's fields, or nil if there is no such upload.
_GET_LUA = (
    _RECORD_LUA
    + """
local r = record(KEYS[1])
if not r[F.epoch] then return false end
return r
"""
)

# KEYS: upload.
_MARK_ASSEMBLED_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'assembled', '1') end
return 0
"""

# KEYS: upload, expiry. ARGV: id.
_DELETE_LUA = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
"""

# KEYS: upload, expiry. ARGV: id, now. Returns 1 if the upload expired and is now gone.
_EXPIRE_LUA = """
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'expires_at', 'length', 'offset')
if not cur[1] then
  -- No record, but still indexed as expired: its backstop TTL fired. Report it once, so
  -- the reaper deletes its bytes too.
  local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if score and tonumber(score) < tonumber(ARGV[2]) then
    redis.call('ZREM', KEYS[2], ARGV[1])
    return 1
  end
  return 0
end
if not cur[2] or not (tonumber(cur[2]) < tonumber(ARGV[2])) then return 0 end
if cur[3] and cur[3] == cur[4] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""


_SCRIPTS: dict[str, tuple[str, str]] = {
    name: (body, hashlib.sha1(body.encode()).hexdigest())
    for name, body in {
        "create": _CREATE_LUA,
        "get": _GET_LUA,
        "acquire": _ACQUIRE_LUA,
        "commit": _COMMIT_LUA,
        "mark_assembled": _MARK_ASSEMBLED_LUA,
        "delete": _DELETE_LUA,
        "expire": _EXPIRE_LUA,
    }.items()
}
"""Each script's body and SHA1, the name ``EVALSHA`` knows it by."""


def _float(value: float) -> str:
    """A float as Redis and Lua parse it back exactly (``repr`` round-trips)."""
    number = float(value)
    if math.isnan(number):
        raise ValueError("a time must be a number, not NaN")
    return repr(number)


def _score(length: int | None, offset: int, expires_at: float | None) -> str:
    """The expiry-index score of a record, or '' when it must not be indexed."""
    if expires_at is None or (length is not None and offset == length):
        return ""
    return _float(expires_at)


def _fields(record: UploadRecord) -> list[str]:
    """The hash fields of a record, flattened: name, value, name, value…"""
    values: dict[str, str | None] = {
        "length": None if record.length is None else str(record.length),
        "offset": str(record.offset),
        "metadata": metadata_to_json(record.metadata),
        "partial": "1" if record.partial else "0",
        "parts": None if record.parts is None else json.dumps(list(record.parts)),
        "created_at": _float(record.created_at),
        "expires_at": None if record.expires_at is None else _float(record.expires_at),
        "epoch": str(record.epoch),
        "tail": record.tail,
        "tail_epoch": str(record.tail_epoch),
        "segments": segments_to_json(record.segments),
        "assembled": "1" if record.assembled else "0",
        "last_client": record.last_client,
        "last_node": record.last_node,
        "client_switches": str(record.client_switches),
        "node_switches": str(record.node_switches),
    }
    return [item for name, value in values.items() if value is not None for item in (name, value)]


def _record(upload_id: str, values: Sequence[str | None]) -> UploadRecord:
    """The record from a script's reply: the values of ``_RECORD_FIELDS``, then ``op``
    (a missing field's Lua false arrives as nil, under RESP2 and RESP3 alike)."""
    (
        length,
        offset,
        metadata,
        partial,
        parts,
        created_at,
        expires_at,
        epoch,
        tail,
        tail_epoch,
        segments,
        assembled,
        last_client,
        last_node,
        client_switches,
        node_switches,
        _op,
    ) = values
    assert offset and metadata and created_at and epoch and tail_epoch and segments
    assert client_switches and node_switches
    return UploadRecord(
        id=upload_id,
        length=None if length is None else int(length),
        offset=int(offset),
        metadata=metadata_from_json(metadata),
        partial=partial == "1",
        parts=None if parts is None else tuple(str(p) for p in json.loads(parts)),
        created_at=float(created_at),
        expires_at=None if expires_at is None else float(expires_at),
        epoch=int(epoch),
        tail=tail,
        tail_epoch=int(tail_epoch),
        segments=segments_from_json(segments),
        assembled=assembled == "1",
        last_client=last_client,
        last_node=last_node,
        client_switches=int(client_switches),
        node_switches=int(node_switches),
    )


class _Wire(asyncio.Protocol):
    """A connection redis-py opened (TCP or TLS, ``HELLO``/``AUTH``/``SELECT``, its connect
    timeout: all its own), whose socket this protocol then reads with one hiredis reader.
    Without redis-py's stream reader and writer, its ``drain`` and its reply chain, an
    acquire+commit pair took 238 µs of client CPU instead of 330 (``bench/state_stores.py``
    on uvloop, the two measured in turn on a slow day), and every append makes that pair.

    One command at a time: ``call`` writes it and waits for one reply. Anything else the
    server sends (bytes past that reply, bytes nobody asked for, garbage) means the
    connection is out of step: it is dropped, like one that closes or misses its deadline.
    Only RESP2 connections are taken, where nothing arrives unasked (RESP3 may push)."""

    __slots__ = ("_reader", "_waiter", "_writer", "lost", "transport")

    def __init__(self, writer: object, transport: asyncio.Transport) -> None:
        self._writer = writer  # an asyncio stream writer closes its transport when collected
        self.transport = transport
        self._reader = _hiredis.Reader(encoding="utf-8", notEnoughData=_PENDING)
        self._waiter: asyncio.Future[Any] | None = None
        self.lost = False

    @classmethod
    def take(cls, conn: AbstractConnection) -> _Wire | None:
        """The wire of a connection redis-py has just opened; None if this redis-py keeps
        its socket where this code does not look (it is then used as it is)."""
        if getattr(conn, "protocol", None) != 2:
            return None
        transport = getattr(getattr(conn, "_writer", None), "transport", None)
        # (uvloop's transports are not asyncio.Transport subclasses, so by what they do)
        if not all(hasattr(transport, name) for name in ("set_protocol", "write", "abort")):
            return None
        if getattr(getattr(conn, "_reader", None), "_buffer", None):
            return None  # bytes already read past the handshake: not in step
        wire = cls(conn._writer, cast(asyncio.Transport, transport))
        wire.transport.set_protocol(wire)
        # redis-py's connection no longer owns the socket (nor warns about it when collected).
        conn._writer = conn._reader = None
        return wire

    def data_received(self, data: bytes) -> None:
        waiter, self._waiter = self._waiter, None
        try:
            self._reader.feed(data)
            if waiter is None or waiter.done():
                raise rx.ConnectionError("unexpected data from Redis")
            reply = self._reader.gets()
            if reply is _PENDING:  # not whole yet
                self._waiter = waiter
                return
            if self._reader.has_data():
                raise rx.ConnectionError("unexpected data from Redis")
        except Exception as exc:
            self.drop()
            if waiter is not None and not waiter.done():
                waiter.set_exception(rx.ConnectionError(f"Redis reply unreadable: {exc}"))
            return
        waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(rx.ConnectionError("Connection closed by server."))

    def drop(self) -> None:
        self.lost = True
        self.transport.abort()

    async def call(self, packed: bytes, deadline: float | None) -> Any:
        """The reply to ``packed``, by ``deadline`` (the loop's time) if one is given."""
        if self.lost:
            raise rx.ConnectionError("Connection closed by server.")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self.transport.write(packed)
        timer = None if deadline is None else loop.call_at(deadline, _late, waiter)
        try:
            reply = await waiter
        finally:
            if timer is not None:
                timer.cancel()
        if isinstance(reply, _hiredis.ReplyError):
            error: rx.RedisError = _BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
            raise error
        return reply


_PENDING = object()  # hiredis's answer while a reply is not whole


def _late(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(rx.TimeoutError("Timeout reading from Redis"))


class _Connections:
    """The connections one event loop runs the scripts on: redis-py connections, used
    directly. Through ``Redis.execute_command`` and its pool an acquire+commit pair cost
    270 µs of CPU on loopback, against 160 µs this way (``bench/state_stores.py``, the two
    measured in turn; 85 µs on a quiet machine): the client's pool lock and connection
    check, its observability hooks, a ``wait_for`` per send and packing the command in
    Python each took their share. Every append pays it, on the node's one core. Where it
    can (hiredis installed, RESP2, a socket redis-py hands over) a connection is then read
    through a ``_Wire``; otherwise through redis-py's own reader.

    One call is one command on an idle connection (a new one if none is idle), under one
    deadline, the reply timeout. A connection whose exchange did not complete (an error,
    the deadline, a cancelled request) is closed and dropped, so a late reply is never
    read as the answer to another command. Retries are the caller's
    (``RedisStateStore._script``)."""

    def __init__(self, pool: ConnectionPool) -> None:
        kwargs = dict(pool.connection_kwargs)
        self.deadline: float | None = kwargs.get("socket_timeout")
        # One deadline for the whole call instead of one per socket operation, and no
        # retries inside a connection: ``_call`` retries the command as a whole.
        kwargs["socket_timeout"] = None
        kwargs["retry"] = Retry(NoBackoff(), 0)
        if kwargs.get("protocol") is None:
            kwargs["protocol"] = 2  # (redis-py's own default is RESP3, which a _Wire refuses)
        self._new = functools.partial(pool.connection_class, **kwargs)
        self._max = pool.max_connections
        self._open: set[AbstractConnection | _Wire] = set()
        self._idle: list[AbstractConnection | _Wire] = []
        encoding = str(kwargs.get("encoding", "utf-8")).lower().replace("_", "-")
        strict = kwargs.get("encoding_errors", "strict") == "strict"
        self._in_c = _hiredis is not None and encoding in ("utf-8", "utf8") and strict
        # RESP3 may push messages nobody asked for (redis-py handles those itself).
        self._wired = self._in_c and str(kwargs["protocol"]) == "2"

    async def call(self, *command: str | int) -> Any:
        """The reply to ``command``; redis-py's exceptions as they come."""
        conn: AbstractConnection | _Wire | None = None
        while self._idle:
            conn = self._idle.pop()
            if not (isinstance(conn, _Wire) and conn.lost):
                break
            self._open.discard(conn)  # closed while idle (a server restart): not a try
            conn = None
        if conn is None:
            if len(self._open) >= self._max:
                raise rx.ConnectionError(f"all {self._max} connections (max_connections) are busy")
            conn = self._new()
            self._open.add(conn)
        # (hiredis's stub types the command as a 1-tuple)
        packed: Any = _hiredis.pack_command(command) if self._in_c else None  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        deadline = None if self.deadline is None else loop.time() + self.deadline
        try:
            if self._wired and not isinstance(conn, _Wire) and not conn.is_connected:
                try:
                    async with asyncio.timeout_at(deadline):
                        await conn.connect()  # type: ignore[no-untyped-call]
                except TimeoutError:
                    raise rx.TimeoutError("Timeout connecting to Redis") from None
                wire = _Wire.take(conn)
                if wire is not None:
                    self._open.discard(conn)
                    self._open.add(wire)
                    conn = wire
            if isinstance(conn, _Wire):
                reply = await conn.call(packed, deadline)
            else:
                async with asyncio.timeout_at(deadline):
                    if packed is None:
                        packed = conn.pack_command(*command)
                    await conn.send_packed_command(packed, check_health=False)
                    reply = await conn.read_response()
        except rx.ResponseError:
            self._idle.append(conn)  # the server answered: the connection is in step
            raise
        except BaseException:
            # Not in step any more (redis-py has closed it already on most paths): never
            # used again, so that no late reply answers another command.
            self._open.discard(conn)
            await _disconnect(conn)
            raise
        self._idle.append(conn)
        return reply

    async def close(self) -> None:
        conns, self._open, self._idle = self._open, set(), []
        for conn in conns:
            await _disconnect(conn)


async def _disconnect(conn: AbstractConnection | _Wire) -> None:
    if isinstance(conn, _Wire):
        conn.drop()
    elif conn.is_connected:
        with contextlib.suppress(Exception):
            await conn.disconnect(nowait=True)


@dataclass
class _Link:
    """One event loop's client (for the commands that are not scripts) and connections."""

    client: aioredis.Redis
    connections: _Connections
    watcher: asyncio.Task[None] | None = None
    verified: bool = False  # durable=True: the server's persistence was checked


class RedisStateStore:
    def __init__(
        self,
        url: str,
        *,
        redis_url: str,
        prefix: str = DEFAULT_PREFIX,
        durable: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        """``url`` is what the user gave (shown redacted), ``redis_url`` what redis-py
        gets, ``options`` extra keyword arguments for ``redis.asyncio.Redis.from_url``."""
        self._shown = redact(url)
        self._redis_url = redis_url
        self._options = dict(options or {})
        self.prefix = prefix
        self.durable = durable
        self._expiry_key = f"{prefix}expiry"
        self._links: dict[asyncio.AbstractEventLoop, _Link] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._token_base = secrets.token_hex(8) + ":"
        self._tokens = itertools.count()

    def __repr__(self) -> str:
        return f"RedisStateStore({self._shown!r})"

    # -- plumbing ----------------------------------------------------------------------

    def _key(self, upload_id: str) -> str:
        return f"{self.prefix}upload:{upload_id}"

    def _token(self) -> str:
        return f"{self._token_base}{next(self._tokens)}"

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(
            f"Redis at {self._shown} is unavailable: {str(exc) or type(exc).__name__}"
        )

    def _open_link(self, loop: asyncio.AbstractEventLoop) -> _Link:
        client = aioredis.Redis.from_url(self._redis_url, **self._options)
        link = _Link(client=client, connections=_Connections(client.connection_pool))
        link.watcher = loop.create_task(self._watch(loop, link), name=f"{self!r} closer")
        return link

    async def _watch(self, loop: asyncio.AbstractEventLoop, link: _Link) -> None:
        """Wait until the loop shuts down (or ``close``), then close the loop's client."""
        try:
            await loop.create_future()
        finally:
            with self._lock:
                if self._links.get(loop) is link:
                    del self._links[loop]
            # Closing is best effort: the sockets go either way.
            with contextlib.suppress(Exception):
                await link.client.aclose()
            await link.connections.close()

    async def _link(self) -> _Link:
        if self._closed:
            raise StoreUnavailable(f"{self!r} is closed")
        loop = asyncio.get_running_loop()
        link = self._links.get(loop)
        if link is None:
            with self._lock:
                if self._closed:
                    raise StoreUnavailable(f"{self!r} is closed")
                # A loop closed without cancelling its tasks never ran its watcher.
                for dead in [other for other in self._links if other.is_closed()]:
                    del self._links[dead]
                link = self._links.get(loop)
                if link is None:
                    link = self._links[loop] = self._open_link(loop)
        if self.durable and not link.verified:
            await self._verify_durable(link)
            link.verified = True
        return link

    async def _verify_durable(self, link: _Link) -> None:
        try:
            config = await link.client.config_get("append*")
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        except rx.ResponseError as exc:
            raise StoreUnavailable(
                f"Redis at {self._shown}: durable state needs CONFIG GET to verify that"
                f" every write is fsynced, and it failed: {exc}. Open the store with"
                " durable=False (--durability process) if the server's persistence is"
                " known to be enough."
            ) from exc
        appendonly, appendfsync = config.get("appendonly"), config.get("appendfsync")
        if appendonly != "yes" or appendfsync != "always":
            raise StoreUnavailable(
                f"Redis at {self._shown} has appendonly={appendonly},"
                f" appendfsync={appendfsync}: durable state (--durability machine) needs"
                " appendonly yes and appendfsync always, so that Redis fsyncs each change"
                " before acknowledging it"
            )

    async def _script(self, name: str, keys: list[str], args: list[str]) -> Any:
        """Run script ``name`` (by its SHA1, sending its body once the server says it does
        not know it, e.g. after a restart or ``SCRIPT FLUSH``), retried on connection
        errors and timeouts as redis-py's client would: ``_RETRIES`` more times, after a
        short backoff. The scripts' op tokens make a retry of a command that did run
        harmless (see the module docstring)."""
        link = await self._link()
        body, sha = _SCRIPTS[name]
        failures = 0
        while True:
            try:
                try:
                    return await link.connections.call("EVALSHA", sha, len(keys), *keys, *args)
                except rx.NoScriptError:
                    return await link.connections.call("EVAL", body, len(keys), *keys, *args)
            except _RETRIED as exc:
                failures += 1
                if failures > _RETRIES:
                    raise self._unavailable(exc) from exc
                await asyncio.sleep(_BACKOFF.compute(failures))
            except _UNAVAILABLE as exc:
                raise self._unavailable(exc) from exc

    # -- the StateStore protocol -------------------------------------------------------

    async def create(self, record: UploadRecord) -> None:
        args = [
            record.id,
            self._token(),
            _score(record.length, record.offset, record.expires_at),
            str(_TTL_MARGIN_MS),
            *_fields(record),
        ]
        created = await self._script("create", [self._key(record.id), self._expiry_key], args)
        if not created:
            raise UploadExists(record.id)

    async def get(self, upload_id: str) -> UploadRecord | None:
        reply = await self._script("get", [self._key(upload_id)], [])
        return _record(upload_id, reply) if reply else None

    async def acquire(self, upload_id: str, *, node: str, client: str | None) -> UploadRecord:
        args = [self._token(), node, "0" if client is None else "1", client or ""]
        reply = await self._script("acquire", [self._key(upload_id)], args)
        if not reply:  # nil (Lua false), whichever RESP version the URL chose
            raise KeyError(upload_id)
        return _record(upload_id, reply)

    async def commit(self, upload_id: str, commit: Commit) -> None:
        check_commit(commit)
        args = [
            upload_id,
            self._token(),
            str(commit.epoch),
            str(commit.expected_offset),
            str(commit.offset),
            segments_to_json(commit.segments),
            "" if commit.length is None else str(commit.length),
            "" if commit.expires_at is None else _float(commit.expires_at),
            _score(commit.length, commit.offset, commit.expires_at),
            str(_TTL_MARGIN_MS),
            "1" if commit.release else "0",
            "0" if commit.release_tail is None else "1",
            commit.release_tail or "",
        ]
        reply = await self._script("commit", [self._key(upload_id), self._expiry_key], args)
        if not reply:
            raise StaleLease(upload_id)

    async def mark_assembled(self, upload_id: str) -> None:
        await self._script("mark_assembled", [self._key(upload_id)], [])

    async def delete(self, upload_id: str) -> bool:
        keys = [self._key(upload_id), self._expiry_key]
        return bool(await self._script("delete", keys, [upload_id]))

    async def expire(self, upload_id: str, now: float) -> bool:
        keys = [self._key(upload_id), self._expiry_key]
        return bool(await self._script("expire", keys, [upload_id, _float(now)]))

    async def expired(self, now: float, limit: int) -> list[str]:
        link = await self._link()
        try:
            ids = await link.client.zrangebyscore(
                self._expiry_key, "-inf", f"({_float(now)}", start=0, num=limit
            )
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        return [str(i) for i in ids]

    async def check(self) -> None:
        link = await self._link()
        try:
            await link.client.ping()
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        if self.durable:  # again on every check: the server's configuration may change
            await self._verify_durable(link)

    async def close(self) -> None:
        with self._lock:
            self._closed = True
            links = list(self._links.items())
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, link in links:
            if link.watcher is None:
                continue
            if loop is current:
                link.watcher.cancel()
                await asyncio.wait([link.watcher])
            elif not loop.is_closed():
                loop.call_soon_threadsafe(link.watcher.cancel)


def open_from_url(url: str, *, durable: bool = False) -> RedisStateStore:
    """A store on the Redis the URL names; raises ``BackendError`` for a URL redis-py or
    tether would not understand. Connects only on first use."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {name: value for name, value in query if name in TETHER_PARAMS}
    theirs = [(name, value) for name, value in query if name not in TETHER_PARAMS]
    # redis-py's URL options, less those its plain connection pool would reject on the
    # first connection: ``timeout`` (BlockingConnectionPool's) and, without TLS, ``ssl_*``.
    accepted = set(URL_QUERY_ARGUMENT_PARSERS) - {"timeout"}
    if parts.scheme.lower() != "rediss":
        accepted = {name for name in accepted if not name.startswith("ssl_")}
    unknown = sorted({name for name, _ in theirs} - accepted)
    if unknown:
        known = ", ".join(sorted(TETHER_PARAMS | accepted))
        raise BackendError(
            f"{redact(url)!r}: unknown query parameter(s) {', '.join(unknown)}"
            f" for {parts.scheme}://; known: {known}"
        )
    redis_url = urlunsplit(parts._replace(query=urlencode(theirs)))
    try:
        given = parse_url(redis_url)
    except ValueError as exc:
        raise BackendError(f"{redact(url)!r}: {exc}") from exc
    options: dict[str, Any] = {
        "decode_responses": True,
        "retry": Retry(_BACKOFF, _RETRIES),
    }
    if "socket_connect_timeout" not in given:
        options["socket_connect_timeout"] = _CONNECT_TIMEOUT
    if "socket_timeout" not in given:
        options["socket_timeout"] = _REPLY_TIMEOUT
    return RedisStateStore(
        url,
        redis_url=redis_url,
        prefix=ours.get("prefix", DEFAULT_PREFIX),
        durable=durable,
        options=options,
    )
