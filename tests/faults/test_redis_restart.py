"""The embedded Redis SIGKILLed under a live session: it comes back, and nothing else restarts."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import aiohttp
import pytest

from tests.conftest import TreeFactory
from tests.tree import Tree

pytestmark = pytest.mark.timeout(90)


async def audit_event(
    tree: Tree, http: aiohttp.ClientSession, event: str, child: str | None = None
) -> dict[str, Any]:
    """Wait (through the supervisor API) until the audit log has `event` for `child`."""
    after = "0"
    while True:
        params = {"after": after, "block_ms": "5000", "count": "1000"}
        async with http.get(f"{tree.status_url}/audit", params=params,
                            headers=tree.admin) as resp:  # fmt: skip
            page = await resp.json()
        for entry in page["entries"]:
            if entry["event"] == event and entry.get("child") == child:
                return dict(entry)
        after = page["last_id"]


async def chunk(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Send one chunk; its ack and final, or the error that refused it."""
    await ws.send_bytes(b"\x00" * 320)
    replies = [await ws.receive_json(timeout=30)]
    if replies[0]["status"] == "received":
        replies.append(await ws.receive_json(timeout=30))
    return replies


async def test_redis_killed_comes_back_and_sessions_carry_on_without_crashes(
    start_tree: TreeFactory,
) -> None:
    tree = await start_tree()  # embedded Redis, restarted by the supervisor
    before = {a["name"]: a for a in (await tree.status())["actors"]}
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(tree.ws_url)
        await ws.receive_json(timeout=10)
        assert [r["status"] for r in await chunk(ws)] == ["received", "transcript"]
        os.kill(before["redis"]["pid"], signal.SIGKILL)
        # The new Redis starts empty: this entry is among the first it holds.
        back = await audit_event(tree, http, "actor_ready", "redis")
        results = []
        for _ in range(10):
            result = await chunk(ws)
            results.append(result)
            if result[0]["status"] == "error":
                # Refused clearly, with where the audio stopped being stored, and closed
                # (1013) so the client resumes. The embedded Redis came back empty: no
                # record to resume, a new session it is.
                assert result[0]["code"] == "unavailable" and "last_seq" in result[0], result
                assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
                ws = await http.ws_connect(tree.ws_url)
                assert (await ws.receive_json(timeout=10))["status"] == "ready"
        await ws.close()
    statuses = [[r["status"] for r in result] for result in results]
    # Accepted chunks get their final; the last ones all work.
    assert all(s in (["received", "transcript"], ["error"]) for s in statuses), statuses
    assert statuses[-3:] == [["received", "transcript"]] * 3
    after = {a["name"]: a for a in (await tree.status())["actors"]}
    assert after["redis"]["restarts"] == 1 and after["redis"]["pid"] != before["redis"]["pid"]
    for name in ("transcriber-0", "transcriber-1", "gateway"):
        assert after[name]["restarts"] == 0, f"{name} restarted: {after[name]['last_exit']}"
        assert after[name]["pid"] == before[name]["pid"]
    report = await tree.status()
    assert report["healthy"] is True, report
    print(f"redis back: {back}; chunks: {statuses}")


async def test_redis_paused_for_seconds_restarts_nothing(start_tree: TreeFactory) -> None:
    # kill -STOP for 6 heartbeat intervals: reads block instead of failing. Before, the
    # supervisor's read waited it out, then found every beat 3 s old: the gateway and
    # both transcribers HUNG and restarted, every session forced to resume.
    tree = await start_tree()  # embedded Redis, heartbeats every 0.5 s
    before = {a["name"]: a for a in (await tree.status())["actors"]}
    redis_pid = before["redis"]["pid"]
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        await ws.receive_json(timeout=10)
        assert [r["status"] for r in await chunk(ws)] == ["received", "transcript"]
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(3.0)  # the fault's length, not a wait for an outcome
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        await audit_event(tree, http, "redis_reachable")
        # The session goes on where it was, on its own connection.
        assert [r["status"] for r in await chunk(ws)] == ["received", "transcript"]
    after = {a["name"]: a for a in (await tree.status())["actors"]}
    for name in ("redis", "transcriber-0", "transcriber-1", "gateway"):
        assert after[name]["restarts"] == 0, f"{name} restarted: {after[name]['last_exit']}"
    assert (await tree.status())["healthy"] is True
