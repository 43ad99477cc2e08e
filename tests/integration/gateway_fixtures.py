"""A gateway app in this process, a mock transcriber actor beside it, a real Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.gateway.app import create_app
from services.transcriber.actor import Transcriber
from services.transcriber.engines.mock import MockEngine
from shared.config import Settings

LIMIT = 4000  # max_chunk_bytes in these tests
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, max_chunk_bytes=LIMIT, heartbeat_interval=0.5)


@pytest.fixture
async def transcriber(settings: Settings) -> AsyncIterator[None]:
    assert settings.redis_url is not None
    client = Redis.from_url(settings.redis_url)
    actor = Transcriber(settings, MockEngine(), client, "transcriber-0")
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    # Live before the gateway looks: its own "running" heartbeat, not one written here,
    # which its "starting" one could overwrite.
    await asyncio.wait_for(actor.ready.wait(), 10)
    yield
    stop.set()
    await asyncio.wait_for(task, 5)
    await client.aclose()


@pytest.fixture
async def gateway(
    settings: Settings, aiohttp_client: ClientFactory
) -> AsyncIterator[TestClient[Any, Any]]:
    assert settings.redis_url is not None
    redis = Redis.from_url(settings.redis_url)
    client = await aiohttp_client(create_app(settings, redis))
    yield client
    await client.close()  # the app stops while its Redis client is still open
    await redis.aclose()


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
