"""Redis connections and the command coalescer the hot paths use."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

# Longer than any blocking read hark issues (XREADGROUP blocks for half a heartbeat,
# the audit API for at most MAX_BLOCK_S). redis-py's own default is 5 s: a blocking
# command of 5 s or more then times out, and the retry below re-issues it forever.
SOCKET_TIMEOUT_S = 30.0
MAX_BLOCK_S = 20.0


def connect(url: str, *, name: str | None = None) -> Redis:
    """A client for `url` that retries lost connections with jittered backoff.

    `name` becomes the CLIENT SETNAME of every connection, so `CLIENT LIST` shows
    which actor holds which connection.
    """
    retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=8)
    client: Redis = Redis.from_url(
        url,
        decode_responses=False,
        retry=retry,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=5.0,
        socket_keepalive=True,
        client_name=name,
    )
    return client


class Coalescer:
    """Sends the commands that many coroutines issue in one loop tick as one pipeline.

    An awaited round trip per command costs ~150 µs in the gateway (PERF-FACTS.md);
    while one pipeline is on the wire the next batch collects, so under load each
    round trip carries many commands and at rest each command goes out at once.
    """

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._queue: list[tuple[Sequence[Any], asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def execute(self, *args: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((args, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._flush(), name="redis-coalescer")
            self._task.add_done_callback(self._flush_done)
        return await fut

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            pipe = self._redis.pipeline(transaction=False)
            for args, _ in batch:
                pipe.execute_command(*args)
            try:
                results = await pipe.execute(raise_on_error=False)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if fut.done():  # its caller was cancelled
                    continue
                if isinstance(result, Exception):
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


Entry = tuple[bytes, dict[bytes, bytes]]


def stream_entries(raw: Any) -> list[Entry]:
    """XRANGE / XREVRANGE entries as (id, fields); an entry deleted meanwhile has no fields."""
    return [(entry_id, fields or {}) for entry_id, fields in raw or []]


def text_map(raw: Any) -> dict[str, str]:
    """An HGETALL reply (bytes) as text."""
    return {k.decode(): v.decode() for k, v in (raw or {}).items()}
