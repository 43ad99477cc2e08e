"""Redis connections (redis-py's, and raw ones the hot paths drive by hand) and the
command coalescer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# Longer than any blocking read hark issues (XREADGROUP blocks for half a heartbeat,
# the audit API for at most MAX_BLOCK_S). redis-py's own default is 5 s: a blocking
# command of 5 s or more then times out, and the retry below re-issues it forever.
SOCKET_TIMEOUT_S = 30.0
MAX_BLOCK_S = 20.0
# Connections one client opens at most. More commands at once wait for a free one (up to
# POOL_WAIT_S): redis-py's default pool raises MaxConnectionsError instead, which lost
# audit entries when a few hundred sessions closed at the same moment (bench/idle.py).
MAX_CONNECTIONS = 64
POOL_WAIT_S = 20.0
# Commands the coalescer sends in one pipeline at most. Its replies are handed out only
# once the whole pipeline is read, so a burst (ten thousand chunks at once) goes out in
# steps whose answers flow, not in one pipeline that answers nothing for seconds.
MAX_PIPELINE = 512
# Send buffer asked for on a raw connection over a Unix socket (the embedded Redis), where
# the kernel never grows it (TCP tunes its own): at the default 208 KB a pipeline of audio
# went out a piece per loop turn of a busy gateway, and the round trips, one at a time,
# capped its stores (bench/RESULTS.md, tenth round). The kernel caps what is asked at
# net.core.wmem_max.
UNIX_SEND_BUFFER = 4 << 20


def connect(url: str, *, name: str | None = None) -> Redis:
    """A client for `url` that retries lost connections with jittered backoff.

    `name` becomes the CLIENT SETNAME of every connection, so `CLIENT LIST` shows
    which actor holds which connection.
    """
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8)
    # TCP keepalive is an option of TCP connections only: redis-py's Unix socket
    # connections refuse it (a TypeError at the first command).
    tcp = {} if urlsplit(url).scheme == "unix" else {"socket_keepalive": True}
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        timeout=POOL_WAIT_S,
        decode_responses=False,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        client_name=name,
        **tcp,
    )
    pool.connection_class = _packing_in_c(pool.connection_class)
    return Redis.from_pool(pool)


_PACKING: dict[type[AbstractConnection], type[AbstractConnection]] = {}


def _packing_in_c(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """`cls` packing commands with hiredis, as redis-py's blocking client does already.

    redis-py's asyncio connections pack every command in Python (~2-4 µs each, against
    under 1 µs in hiredis); the hot paths pack several per audio chunk.
    """
    if cls not in _PACKING:

        def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
            head = args[0]
            # As redis-py does: a first argument such as "CONFIG GET" is split in words.
            if (" " if isinstance(head, str) else b" ") in head:
                args = (*head.split(), *args[1:])
            return [pack(args)]

        _PACKING[cls] = type(cls.__name__, (cls,), {"pack_command": pack_command})
    return _PACKING[cls]


# A Redis command as it goes on the wire: its name, then its arguments (str, bytes, int).
Command = tuple[Any, ...]


def pack(args: Sequence[Any]) -> bytes:
    """One command in the Redis protocol, packed by hiredis."""
    packed: bytes
    try:
        packed = hiredis.pack_command(tuple(args))  # the hot path: str, bytes, numbers
        return packed
    except TypeError:
        pass
    plain = tuple(bytes(a) if isinstance(a, (bytearray, memoryview)) else a for a in args)
    try:
        packed = hiredis.pack_command(plain)  # type: ignore[arg-type]
    except TypeError as exc:
        raise DataError(str(exc)) from None
    return packed


_INCOMPLETE = object()  # what the hiredis reader returns while no reply is complete


class RawConnection:
    """One connection of `redis`'s kind (address, TLS, user and password, database,
    client name: redis-py opens it and says hello), driven by hand: commands packed by
    hiredis and written as they come, replies parsed by hiredis from whole socket reads.

    redis-py reads replies one await each, with a health-check clock and, where a
    socket timeout is set, an asyncio timer per reply; here one socket read yields
    every reply it completes. Replies are raw, as Redis sends them in RESP2 (no
    redis-py response callbacks): an error reply is a `ResponseError`, not raised.
    Failures are redis-py's ConnectionError, what every caller handles already.
    """

    def __init__(self, redis: Redis) -> None:
        pool = redis.connection_pool
        # RESP2, whatever the client speaks (redis-py 8 says HELLO 3): raw replies then
        # have one shape, e.g. XREADGROUP's [[stream, entries]] rather than a map.
        kwargs = {**pool.connection_kwargs, "socket_timeout": None, "health_check_interval": 0,
                  "protocol": 2}  # fmt: skip
        self._conn = pool.connection_class(**kwargs)
        self._replies: Any = None  # the hiredis reader while connected

    @property
    def connected(self) -> bool:
        return self._replies is not None

    async def connect(self) -> None:
        await self._conn.connect()  # type: ignore[no-untyped-call]
        writer = self._conn._writer
        sock = None if writer is None else writer.transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            with contextlib.suppress(OSError):  # a tuning: the connection works without it
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, UNIX_SEND_BUFFER)
        self._replies = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError,
                                       notEnoughData=_INCOMPLETE)  # fmt: skip

    def write(self, commands: Sequence[Sequence[Any]]) -> None:
        """Queue `commands` on the socket, packed in one piece."""
        writer = self._conn._writer  # redis-py's stream of the connection it opened
        if self._replies is None or writer is None:
            raise RedisConnectionError("not connected to Redis")
        try:
            writer.write(b"".join([pack(c) for c in commands]))
        except (OSError, RuntimeError) as exc:  # RuntimeError: the transport is closed
            raise RedisConnectionError(f"Redis connection lost: {exc!r}") from exc

    async def drain(self) -> None:
        """Until the socket has taken what was written (Redis reads it)."""
        writer = self._conn._writer
        try:
            if writer is not None:
                await writer.drain()
        except OSError as exc:
            raise RedisConnectionError(f"Redis connection lost: {exc!r}") from exc

    async def replies(self) -> list[Any]:
        """The replies that the next read from the socket completes (maybe none)."""
        stream, reader = self._conn._reader, self._replies
        if reader is None or stream is None:
            raise RedisConnectionError("not connected to Redis")
        try:
            data = await stream.read(1 << 16)
        except OSError as exc:
            raise RedisConnectionError(f"Redis connection lost: {exc!r}") from exc
        if not data:
            raise RedisConnectionError("Redis closed the connection")
        reader.feed(data)
        out = []
        while (reply := reader.gets()) is not _INCOMPLETE:
            out.append(reply)
        return out

    async def close(self) -> None:
        self._replies = None
        await self._conn.disconnect(nowait=True)


class Wire(RawConnection):
    """A `RawConnection` that runs pipelines, one at a time: one write for the
    commands, their replies in order, one timeout (SOCKET_TIMEOUT_S) for the whole
    round trip. One that fails or is cancelled drops the connection (its replies could
    no longer be told apart from the next one's); the next opens a new connection.

    Commands that need no reply yet can go ahead with `send`: the next `execute`
    reads their replies before its own.
    """

    def __init__(self, redis: Redis) -> None:
        super().__init__(redis)
        self.owed = 0  # replies to commands of `send` that no `execute` has read yet

    def send(self, commands: Sequence[Sequence[Any]]) -> None:
        """Write `commands` now, without waiting for Redis: the next `execute` reads
        their replies ahead of its own and raises the first error among them. Raises
        redis-py's ConnectionError when not connected (nothing is written then)."""
        self.write(commands)
        self.owed += len(commands)

    async def execute(
        self, commands: Sequence[Sequence[Any]], raise_on_error: bool = False
    ) -> list[Any]:
        """Send `commands`; their replies, in order. With `raise_on_error`, the first
        error reply is raised once all are read, as redis-py's pipelines do."""
        replies: list[Any] = []
        owed = self.owed
        try:
            async with asyncio.timeout(SOCKET_TIMEOUT_S):
                if not self.connected:
                    await self.connect()
                self.write(commands)
                await self.drain()
                while len(replies) < owed + len(commands):
                    replies += await self.replies()
        except BaseException as exc:
            await self.close()
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"no reply from Redis in {SOCKET_TIMEOUT_S} s") from None
            raise
        self.owed = 0
        # The replies owed to `send` are checked always: nobody else sees them.
        for reply in replies if raise_on_error else replies[:owed]:
            if isinstance(reply, ResponseError):
                raise reply
        return replies[owed:] if owed else replies

    async def close(self) -> None:
        self.owed = 0  # gone with the connection
        await super().close()


class Coalescer:
    """Sends the commands that many coroutines issue in one loop tick as one pipeline.

    An awaited round trip per command costs ~150 µs in the gateway (PERF-FACTS.md);
    while one pipeline is on the wire the next batch collects, so under load each
    round trip carries many commands and at rest each command goes out at once.
    Commands reach Redis in the order they were submitted, one pipeline after the
    other; a command whose future was cancelled before its pipeline left is not sent.

    It sends on a `Wire` of its own: redis-py's reading of a pipeline (an await, a
    clock read and a timer per reply) cost more than half of the coalescer's CPU. A
    pipeline that fails fails each of its commands; none is sent twice.
    """

    def __init__(self, redis: Redis) -> None:
        self._wire = Wire(redis)
        # Each command with its future and the loop time it was submitted at.
        self._queue: list[tuple[Sequence[Any], asyncio.Future[Any], float]] = []
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of the first submit
        self._sent_since: float | None = None  # the oldest command of the pipeline on the wire
        self.submitted = 0  # commands, since start
        self.answered = 0

    def submit(self, *args: Any) -> asyncio.Future[Any]:
        """Queue a command; its future holds the reply (or the error)."""
        # The loop is looked up once (on Python 3.11 each lookup makes a getpid() call).
        loop = self._loop or self._bind()
        fut: asyncio.Future[Any] = loop.create_future()
        self._queue.append((args, fut, loop.time()))
        self.submitted += 1
        if self._task is None:
            self._task = asyncio.create_task(self._flush(), name="redis-coalescer")
            self._task.add_done_callback(self._flush_done)
        return fut

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    async def execute(self, *args: Any) -> Any:
        return await self.submit(*args)

    def lag_s(self) -> float:
        """How far behind the commands are: how long the oldest one not yet answered
        has waited (0 when every one is answered)."""
        if self._sent_since is not None:
            oldest = self._sent_since
        elif self._queue:
            oldest = self._queue[0][2]
        else:
            return 0.0
        return asyncio.get_running_loop().time() - oldest

    async def _flush(self) -> None:
        while self._queue:
            head, self._queue = self._queue[:MAX_PIPELINE], self._queue[MAX_PIPELINE:]
            batch = [(args, fut) for args, fut, _ in head if not fut.done()]
            self._sent_since = head[0][2]
            try:
                commands = [args for args, _ in batch]
                results = await self._wire.execute(commands) if batch else []
            except Exception as exc:
                results = [exc] * len(batch)
            finally:
                self._sent_since = None
            self.answered += len(batch)
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():  # its caller was cancelled
                    continue
                if isinstance(result, Exception):  # an error reply, or the round trip's
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    def _flush_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("coalescer flush failed", exc_info=task.exception())
        if self._queue:  # queued after the loop's last check, or left by a failed flush
            self._task = asyncio.create_task(self._flush(), name="redis-coalescer")
            self._task.add_done_callback(self._flush_done)

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.wait([self._task])
        await self._wire.close()


Entry = tuple[bytes, dict[bytes, bytes]]


def stream_entries(raw: Any) -> list[Entry]:
    """XRANGE / XREVRANGE entries as (id, fields); an entry deleted meanwhile has no fields."""
    return [(entry_id, fields or {}) for entry_id, fields in raw or []]


def raw_stream_entries(raw: Any) -> list[Entry]:
    """The entries of a stream as Redis sends them (a `Wire` reply to XRANGE, or one
    stream's part of XREADGROUP: [id, [field, value, ...]]), as (id, fields)."""
    return [(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)) if flat else {})
            for entry_id, flat in raw or []]  # fmt: skip


def text_map(raw: Any) -> dict[str, str]:
    """An HGETALL reply (bytes) as text."""
    return {k.decode(): v.decode() for k, v in (raw or {}).items()}
