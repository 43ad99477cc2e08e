"""The gateway's operator endpoints: /stats, /sessions, /sessions/{id} (GET, DELETE)."""

from __future__ import annotations

import dataclasses
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.gateway.app import create_app
from shared.config import Settings
from tests.integration.gateway_fixtures import ClientFactory, open_session, receive

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("transcriber")]

TOKEN = "gateway-admin-token-0123"


async def _acked_and_transcribed(ws: aiohttp.ClientWebSocketResponse, chunks: int) -> None:
    for _ in range(chunks):
        await ws.send_bytes(b"\x01" * 320)
    got = {"received": 0, "transcript": 0}
    while got["transcript"] < chunks or got["received"] < chunks:
        reply = await receive(ws)
        got[reply["status"]] = got.get(reply["status"], 0) + 1


async def test_sessions_lists_each_open_session_with_its_counts_and_no_secret(
    gateway: TestClient[Any, Any],
) -> None:
    ws, hello = await open_session(gateway, "?sample_rate=8000")
    await _acked_and_transcribed(ws, 3)
    async with gateway.get("/sessions") as resp:
        listed = (await resp.json())["sessions"]
    assert [s["session_id"] for s in listed] == [hello["session_id"]]
    one = listed[0]
    assert (one["protocol"], one["transcriber"]) == ("ws", "transcriber-0")
    assert one["sample_rate"] == 8000
    assert (one["chunks"], one["bytes"], one["finals"], one["last_seq"]) == (3, 960, 3, 3)
    assert "resume_token" not in one and hello["resume_token"] not in str(one)
    async with gateway.get(f"/sessions/{hello['session_id']}") as resp:
        assert resp.status == 200
        assert (await resp.json())["session_id"] == hello["session_id"]
    async with gateway.get("/stats") as resp:
        stats = await resp.json()
    assert (stats["sessions"], stats["chunks"], stats["audio_bytes"]) == (1, 3, 960)
    assert stats["results"] == {"final": 3, "partial": 0}
    assert stats["live_transcribers"] == ["transcriber-0"]
    await ws.close()


async def test_an_unknown_session_is_a_404_with_a_code(gateway: TestClient[Any, Any]) -> None:
    for method in ("GET", "DELETE"):
        async with gateway.request(method, "/sessions/nope") as resp:
            assert resp.status == 404
            assert (await resp.json())["code"] == "unknown_session"


async def test_delete_ends_the_session_with_its_finals_a_summary_and_a_normal_close(
    gateway: TestClient[Any, Any],
) -> None:
    ws, hello = await open_session(gateway)
    await _acked_and_transcribed(ws, 2)
    async with gateway.delete(f"/sessions/{hello['session_id']}") as resp:
        assert resp.status == 200
        summary = await resp.json()
    assert summary["reason"] == "ended_by_operator"
    assert (summary["chunks"], summary["complete"]) == (2, True)
    told = await receive(ws)
    assert told == summary
    closing = await ws.receive(timeout=5)
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 1000
    async with gateway.get("/sessions") as resp:
        assert (await resp.json())["sessions"] == []


async def test_with_an_admin_token_delete_and_reading_sessions_need_it(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    assert settings.redis_url is not None
    redis = Redis.from_url(settings.redis_url)
    client = await aiohttp_client(
        create_app(dataclasses.replace(settings, admin_token=TOKEN), redis)
    )
    try:
        ws, hello = await open_session(client)
        path = f"/sessions/{hello['session_id']}"
        async with client.delete(path) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        async with client.get(path) as resp:
            assert resp.status == 401  # session ids are not for every client to see
        async with client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
        async with client.delete(path, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
        await ws.close()
    finally:
        await client.close()
        await redis.aclose()
