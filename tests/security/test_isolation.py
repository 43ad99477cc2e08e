"""A client reaches only its own session's results, by every route the API has.

Two clients with different API keys; the second tries to get the first one's
transcripts: by resuming its session (with its own resume token, a guessed one, or
the right one under another key), by the session endpoints and by the audit API.
Each attempt fails; the first client resumes its own session with the right token.
"""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.supervisor.api import create_status_app
from services.supervisor.backends.process import ProcessBackend
from services.supervisor.supervisor import Supervisor
from shared.config import Settings
from tests.integration.gateway_fixtures import ClientFactory, receive
from tests.security.conftest import KEY as KEY_A
from tests.security.conftest import OTHER as KEY_B
from tests.security.conftest import bearer

# The transcriber first: it is live before the gateway starts looking for one.
pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("transcriber")]


async def resume_reply(
    gateway: TestClient[Any, Any], key: str, session_id: str, token: str
) -> dict[str, Any]:
    query = f"/ws?session_id={session_id}&resume_token={token}&last_final=0"
    ws = await gateway.ws_connect(query, headers=bearer(key))
    reply = await receive(ws)
    await ws.close()
    return reply


async def test_another_client_cannot_reach_a_sessions_results_by_any_route(
    gateway: TestClient[Any, Any],
    settings: Settings,
    redis: Redis,
    aiohttp_client: ClientFactory,
) -> None:
    a = await gateway.ws_connect("/ws", headers=bearer(KEY_A))
    hello_a = await receive(a)
    await a.send_bytes(b"\x00" * 320)
    got = {(await receive(a))["status"] for _ in range(2)}
    assert got == {"received", "transcript"}
    await a.close()  # dropped, not closed: resumable

    b = await gateway.ws_connect("/ws", headers=bearer(KEY_B))
    hello_b = await receive(b)
    # Server-issued ids of 128 bits (32 hex digits), different for each session.
    for hello in (hello_a, hello_b):
        assert len(hello["session_id"]) == len(hello["client_id"]) == 32
        int(hello["session_id"], 16), int(hello["client_id"], 16)
    assert hello_a["client_id"] != hello_b["client_id"]

    sid = hello_a["session_id"]
    attempts = {
        "its own resume token": hello_b["resume_token"],
        "a guessed token": secrets.token_urlsafe(24),
        "the right token under another key": hello_a["resume_token"],
    }
    for what, token in attempts.items():
        reply = await resume_reply(gateway, KEY_B, sid, token)
        assert reply == {"status": "error", "code": "bad_resume", "error":
                         "unknown session or wrong resume token"}, what  # fmt: skip

    # The session endpoints and the audit log (which holds every transcript) are the
    # operators': a client's key opens none of them.
    for path in ("/sessions", f"/sessions/{sid}"):
        for headers in ({}, bearer(KEY_A), bearer(KEY_B)):
            assert (await gateway.get(path, headers=headers)).status == 401
    supervisor = Supervisor(settings, ProcessBackend(), [], settings.redis_url or "")
    status = await aiohttp_client(create_status_app(supervisor))
    for headers in ({}, bearer(KEY_A), bearer(KEY_B)):
        resp = await status.get(f"/audit?session={sid}", headers=headers)
        assert resp.status == 401
    await status.close()

    # Its owner gets it back, transcript and all.
    reply = await resume_reply(gateway, KEY_A, sid, hello_a["resume_token"])
    assert reply["status"] == "resumed" and reply["session_id"] == sid
    await b.close()


async def test_a_results_channel_carries_only_its_own_sessions_replies(
    gateway: TestClient[Any, Any],
) -> None:
    sessions = []
    for key in (KEY_A, KEY_B):
        ws = await gateway.ws_connect("/ws", headers=bearer(key))
        sessions.append((ws, await receive(ws)))
    (a, _), (b, _) = sessions
    for _ in range(5):
        await a.send_bytes(b"\x00" * 320)
    await a.send_str('{"type": "close"}')
    statuses = [r["status"] async for r in _replies(a)]
    assert statuses.count("received") == statuses.count("transcript") == 5
    # Every reply of A's went out before B sends: had one reached B, B would read it
    # before its own.
    await b.send_bytes(b"\x00" * 320)
    replies = [await receive(b) for _ in range(2)]
    assert [(r["status"], r["seq"]) for r in replies] == [("received", 1), ("transcript", 1)]
    await b.close()


async def _replies(ws: aiohttp.ClientWebSocketResponse) -> Any:
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            yield msg.json()
