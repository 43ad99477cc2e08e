"""Per-key and per-address limits: sessions at once, chunks and bytes a second, and
session length; each overflow is refused with its own code (and how long to wait)."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from shared.config import Settings
from tests.integration.gateway_fixtures import LIMIT, gateway_of, receive
from tests.security.conftest import KEY, OTHER, bearer

# The transcriber first: it is live before the gateway starts looking for one.
pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("transcriber")]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, limit_sessions=2, limit_chunks_per_s=5,
                               limit_bytes_per_s=LIMIT)  # fmt: skip


async def connect(gateway: TestClient[Any, Any], key: str) -> aiohttp.ClientWebSocketResponse:
    ws = await gateway.ws_connect("/ws", headers=bearer(key))
    hello = await receive(ws)
    assert hello["status"] == "ready", hello
    return ws


async def test_sessions_at_once_are_limited_per_key_and_per_address(
    gateway: TestClient[Any, Any],
) -> None:
    first, second = await connect(gateway, KEY), await connect(gateway, KEY)
    for key in (KEY, OTHER):  # the key is full; so is the address (both from loopback)
        resp = await gateway.get("/ws", headers=bearer(key))
        assert resp.status == 429 and resp.headers["Retry-After"] == "5"
        body = await resp.json()
        assert body["code"] == "too_many_sessions" and "HARK_LIMIT_SESSIONS" in body["error"]
    await first.close()
    while True:  # its slot comes back once the gateway has ended the session
        resp = await gateway.get("/ws", headers=bearer(OTHER))
        if resp.status != 429:
            break
    assert resp.status == 400  # past the limits: a plain GET is no WebSocket upgrade
    third = await connect(gateway, OTHER)
    await second.close()
    await third.close()


async def test_chunks_and_bytes_a_second_are_limited_and_the_refused_frame_is_not_stored(
    gateway: TestClient[Any, Any],
) -> None:
    ws = await connect(gateway, KEY)
    for _ in range(6):
        await ws.send_bytes(b"\x00" * 10)
    acks, refusal = [], None
    while len(acks) < 5 or refusal is None:
        reply = await receive(ws)
        if reply["status"] == "received":
            acks.append(reply["seq"])
        elif reply["status"] == "error":
            refusal = reply
    assert acks == [1, 2, 3, 4, 5]
    assert refusal["code"] == "rate_limited" and "chunks a second" in refusal["error"]
    assert 0 < refusal["retry_after"] <= 0.2
    await asyncio.sleep(refusal["retry_after"])  # what the error tells the client to do
    await ws.send_bytes(b"\x00" * LIMIT)  # the next frame gets the next seq
    while (reply := await receive(ws))["status"] != "received":
        pass
    assert reply["seq"] == 6
    # A chunk's worth of time later (5 a second) the chunk rate lets the next one in,
    # but a second's worth of bytes went just now.
    await asyncio.sleep(refusal["retry_after"])
    await ws.send_bytes(b"\x00" * LIMIT)
    while (reply := await receive(ws))["status"] != "error":
        pass
    assert reply["code"] == "rate_limited" and "bytes a second" in reply["error"]
    await ws.close()


async def test_a_session_past_its_length_is_ended_with_a_summary(
    gateway: TestClient[Any, Any],
) -> None:
    gw = gateway_of(gateway)
    gw.settings = dataclasses.replace(gw.settings, limit_session_s=0.5)
    ws = await connect(gateway, KEY)
    await ws.send_bytes(b"\x00" * 10)
    replies = []
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            replies.append(msg.json())
    codes = [r.get("code") for r in replies if r["status"] == "error"]
    assert codes == ["session_too_long"]
    summary = replies[-1]
    assert (summary["status"], summary["reason"], summary["chunks"]) == (
        "closed",
        "session_too_long",
        1,
    )
    assert ws.close_code == aiohttp.WSCloseCode.OK


async def test_a_frame_past_twice_the_chunk_limit_is_refused_before_it_is_buffered(
    gateway: TestClient[Any, Any],
) -> None:
    # aiohttp's max_msg_size: the frame header's length is enough to close (1009).
    ws = await connect(gateway, KEY)
    await ws.send_bytes(b"\x00" * (2 * LIMIT + 1))
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
