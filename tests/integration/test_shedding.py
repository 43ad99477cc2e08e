"""A gateway that falls behind storing audio refuses new sessions and sheds the heaviest.

The gateway is made to fall behind for real: it reaches Redis through a proxy that
carries its commands at a fixed rate, slower than the clients send audio, so the
chunks it has read pile up in its coalescer while some still get through, as when it
is short of CPU. (A Redis that answers nothing at all is not overload, nor is a burst
that goes through: the gateway sheds nothing then.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.gateway.app import create_app
from shared.config import Settings
from shared.tasks import cancel_and_wait
from tests.integration.gateway_fixtures import LIMIT, open_session, receive
from tests.link import Link

pytestmark = pytest.mark.timeout(30)

CHUNK = b"\x00" * 320
# Two clients send ~40 KB/s of chunks (with their framing), four times what the link
# carries while it throttles (tests/link.py, THROTTLED_RATE).


@pytest.fixture
def settings(redis_url: str) -> Settings:
    # A long heartbeat: the slow link must not make the transcriber look dead.
    return Settings(redis_url=redis_url, max_chunk_bytes=LIMIT, heartbeat_interval=5.0,
                    max_store_lag=0.1)  # fmt: skip


@pytest.fixture
async def link(redis_url: str) -> AsyncIterator[Link]:
    proxy = Link(redis_url)
    yield proxy
    proxy.throttle.clear()
    await proxy.stop()


@pytest.fixture
async def gateway(
    settings: Settings, link: Link, aiohttp_client: Any
) -> AsyncIterator[TestClient[Any, Any]]:
    """The gateway of gateway_fixtures, reaching Redis through `link`."""
    redis = Redis.from_url(await link.start())
    client = await aiohttp_client(create_app(settings, redis))
    yield client
    await client.close()
    await redis.aclose()


async def stream(ws: aiohttp.ClientWebSocketResponse, every_s: float) -> None:
    with contextlib.suppress(ConnectionError):
        while not ws.closed:
            await ws.send_bytes(CHUNK)
            await asyncio.sleep(every_s)  # the pace of a live stream, not a wait


@contextlib.asynccontextmanager
async def running(*coros: Any) -> AsyncIterator[None]:
    tasks = [asyncio.create_task(c) for c in coros]
    try:
        yield
    finally:
        for task in tasks:
            await cancel_and_wait(task)


async def next_reply(ws: aiohttp.ClientWebSocketResponse, *skip: str) -> dict[str, Any]:
    """The next reply whose status is not one of `skip`."""
    while True:
        reply = await receive(ws)
        if reply["status"] not in skip:
            return reply


async def test_behind_storing_it_refuses_new_sessions_and_sheds_the_heaviest_sender(
    gateway: TestClient[Any, Any], transcriber: None, link: Link
) -> None:
    # The first session sends twice as much as the second: it is shed, though older.
    heavy, hello = await open_session(gateway)
    light, _ = await open_session(gateway)
    link.throttle.set()
    async with running(stream(heavy, 0.01), stream(light, 0.02)):
        shed = await next_reply(heavy, "received", "transcript")
        assert shed["code"] == "session_shed" and "resume" in shed["error"]
        closed = await heavy.receive(timeout=10)
        while closed.type == aiohttp.WSMsgType.TEXT:  # audio it sent meanwhile is refused
            assert closed.json()["code"] == "session_closing"
            closed = await heavy.receive(timeout=10)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1013)
        while True:  # a new connection is refused while a store waits
            resp = await gateway.get("/ws")
            if resp.status == 503:
                break
        assert "behind storing audio" in (await resp.json())["error"]
        link.throttle.clear()

    # The lighter session was kept and goes on; the shed one can be resumed.
    assert not light.closed
    await light.send_bytes(CHUNK)
    assert (await next_reply(light, "transcript"))["status"] == "received"
    query = f"?session_id={hello['session_id']}&resume_token={hello['resume_token']}"
    resumed, back = await open_session(gateway, query)
    assert back["status"] == "resumed"
    await resumed.close()
    await light.close()
