"""A gateway app in this process, a mock transcriber actor beside it, a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from redis.asyncio import Redis

from services.gateway.app import GATEWAY, create_app
from services.gateway.gateway import Gateway
from services.transcriber.actor import Transcriber
from services.transcriber.engines import Immediate, Job, Result
from services.transcriber.engines.mock import MockEngine
from shared import keys
from shared.config import Settings

LIMIT = 4000  # max_chunk_bytes in these tests
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, max_chunk_bytes=LIMIT, heartbeat_interval=0.5)


@contextlib.asynccontextmanager
async def _running(settings: Settings, engine: Any) -> AsyncIterator[None]:
    """transcriber-0 with `engine`, running beside the test."""
    assert settings.redis_url is not None
    client = Redis.from_url(settings.redis_url)
    actor = Transcriber(settings, engine, client, "transcriber-0")
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    # Live before the gateway looks: its own "running" heartbeat, not one written here,
    # which its "starting" one could overwrite.
    await asyncio.wait_for(actor.ready.wait(), 10)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await client.aclose()


@pytest.fixture
async def transcriber(settings: Settings) -> AsyncIterator[None]:
    async with _running(settings, MockEngine()):
        yield


class HeldSession(Immediate):
    """Audio makes no final until the flush, whose final's decoding waits for `release`
    (as a model's last utterance does while it is decoded)."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.committed_seq = 0
        self.last = 0
        self.finals_cut = self.finals_done = 0
        self._owed: Job | None = None

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        self.last = seq
        return []

    def flush(self) -> list[Result]:
        if self.last > self.committed_seq and self._owed is None:
            self.finals_cut += 1
            last = self.last

            def finish(_: object) -> list[Result]:
                self._owed = None
                self.committed_seq = last
                self.finals_done += 1
                return [Result(last, "the last utterance", True)]

            self._owed = Job(True, time.monotonic(), lambda: self.release.wait(10), finish)
        return []

    def final_since(self) -> float | None:
        return None if self._owed is None else self._owed.since

    def final_job(self, hurry: bool = False) -> Job | None:
        return self._owed


class HeldEngine:
    name = "held"
    blocking = True  # its calls run in a thread: the flush may wait there

    def __init__(self) -> None:
        self.release = threading.Event()

    def open_session(
        self, session_id: str, encoding: str, sample_rate: int, end_silence: float | None = None
    ) -> HeldSession:
        return HeldSession(self.release)


@pytest.fixture
async def held_engine(settings: Settings) -> AsyncIterator[HeldEngine]:
    """transcriber-0 (in place of `transcriber`) with an engine whose flushes wait for
    the test to set `release`."""
    engine = HeldEngine()
    try:
        async with _running(settings, engine):
            yield engine
    finally:
        engine.release.set()  # a flush still waiting lets the transcriber stop


@contextlib.asynccontextmanager
async def closed_mark(
    redis: Redis, session_id: str
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """Redis says when the gateway marks a session closed (a keyspace event): the
    function yielded waits for the next HSET of the session's record."""
    pubsub = redis.pubsub()
    await redis.config_set("notify-keyspace-events", "Kh")
    try:
        await pubsub.subscribe(f"__keyspace@0__:{keys.session(session_id)}")
        assert (await pubsub.get_message(timeout=10))["type"] == "subscribe"  # type: ignore[index]

        async def marked() -> None:
            event = await pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
            assert event is not None and event["data"] == b"hset"

        yield marked
    finally:
        await pubsub.aclose()
        await redis.config_set("notify-keyspace-events", "")


class AsDeployed(TestServer):
    """A test server that runs the app's handlers as `hark up` does: aiohttp's test
    server cancels the handler of a connection it loses, `web.AppRunner` (the gateway's)
    by default does not, so a close under way finishes there."""

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
async def gateway(
    settings: Settings, aiohttp_client: ClientFactory
) -> AsyncIterator[TestClient[Any, Any]]:
    assert settings.redis_url is not None
    redis = Redis.from_url(settings.redis_url)
    client = await aiohttp_client(AsDeployed(create_app(settings, redis)))
    yield client
    await client.close()  # the app stops while its Redis client is still open
    await redis.aclose()


def gateway_of(client: TestClient[Any, Any]) -> Gateway:
    """The Gateway behind a test client of the gateway app."""
    assert client.server.app is not None
    return client.server.app[GATEWAY]


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a reply, got {msg}"
    reply: dict[str, Any] = json.loads(msg.data)
    return reply


async def open_session(
    gateway: TestClient[Any, Any], query: str = ""
) -> tuple[Any, dict[str, Any]]:
    ws = await gateway.ws_connect(f"/ws{query}")
    return ws, await receive(ws)
