"""A gateway that falls behind storing audio refuses new sessions and sheds the newest.

The gateway is made to fall behind for real: Redis stutters (paused for writes with
CLIENT PAUSE WRITE for a while, then let go for a moment, over and over), so the
chunks the gateway has read wait in its coalescer while some still get through, as
when it is short of CPU. (A Redis that answers nothing at all is not overload: the
gateway sheds nothing then.)
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

from shared.config import Settings
from shared.tasks import cancel_and_wait
from tests.integration.gateway_fixtures import LIMIT, open_session, receive

pytestmark = pytest.mark.timeout(30)

PAUSE_MS = 300
CHUNK = b"\x00" * 320


@pytest.fixture
def settings(redis_url: str) -> Settings:
    # A long heartbeat: the pauses must not make the transcriber look dead.
    return Settings(redis_url=redis_url, max_chunk_bytes=LIMIT, heartbeat_interval=5.0,
                    max_store_lag=0.1)  # fmt: skip


async def stutter(redis: Redis) -> None:
    while True:
        await redis.client_pause(PAUSE_MS, all=False)
        await asyncio.sleep(PAUSE_MS / 1000 + 0.05)  # the pause, then a moment free


async def stream(ws: aiohttp.ClientWebSocketResponse) -> None:
    with contextlib.suppress(ConnectionError):
        while not ws.closed:
            await ws.send_bytes(CHUNK)
            await asyncio.sleep(0.02)  # the pace of a live stream, not a wait


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


async def test_behind_storing_it_refuses_new_sessions_and_sheds_the_newest_one(
    gateway: TestClient[Any, Any], transcriber: None, redis: Redis
) -> None:
    older, _ = await open_session(gateway)
    newer, hello = await open_session(gateway)
    async with running(stutter(redis), stream(older), stream(newer)):
        shed = await next_reply(newer, "received", "transcript")
        assert shed["code"] == "session_shed" and "resume" in shed["error"]
        closed = await newer.receive(timeout=10)
        assert (closed.type, closed.data) == (aiohttp.WSMsgType.CLOSE, 1013)
        while True:  # a new connection is refused while a store waits
            resp = await gateway.get("/ws")
            if resp.status == 503:
                break
        assert "behind storing audio" in (await resp.json())["error"]
    await redis.execute_command("CLIENT", "UNPAUSE")

    # The older session was kept and goes on; the shed one can be resumed.
    assert not older.closed
    await older.send_bytes(CHUNK)
    assert (await next_reply(older, "transcript"))["status"] == "received"
    query = f"?session_id={hello['session_id']}&resume_token={hello['resume_token']}"
    resumed, back = await open_session(gateway, query)
    assert back["status"] == "resumed"
    await resumed.close()
    await older.close()
