"""Operating a running tree: scale the transcriber pool, drain and restart actors, and
the admin token that guards all three (HTTP API and the `hark` commands)."""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest

from tests.conftest import TreeFactory
from tests.tree import Tree, count, replies_until, stall_actor

pytestmark = pytest.mark.timeout(90)

TOKEN = "operator-token-0123456789"


async def _states(tree: Tree) -> dict[str, str]:
    return {a["name"]: a["state"] for a in (await tree.status())["actors"]}


async def _open(
    http: aiohttp.ClientSession, tree: Tree
) -> tuple[aiohttp.ClientWebSocketResponse, str]:
    ws = await http.ws_connect(tree.ws_url)
    hello = await ws.receive_json(timeout=10)
    return ws, hello["actor"]


async def test_scale_up_adds_running_transcribers_that_take_new_sessions(tree: Tree) -> None:
    code, out = await tree.cli("scale", "transcriber=3")
    assert code == 0, out
    assert "transcriber: 3 running" in out
    assert (await _states(tree))["transcriber-2"] == "RUNNING"
    await tree.wait_audit(lambda e: e["event"] == "tree_scaled" and e["after"] == "3",
                          from_start=True)  # fmt: skip
    # Once the gateway has seen the newcomer, which holds no session yet, the next new
    # sessions spread over all three.
    await tree.gateway_stats(lambda s: "transcriber-2" in s["live_transcribers"])
    async with aiohttp.ClientSession() as http:
        sessions = [await _open(http, tree) for _ in range(3)]
        assert sorted(actor for _, actor in sessions) == [
            "transcriber-0", "transcriber-1", "transcriber-2"
        ]  # fmt: skip
        for ws, _ in sessions:
            await ws.close()
    code, out = await tree.cli("status")
    assert code == 0 and "transcriber-2" in out


async def test_scale_down_moves_the_sessions_of_the_stopped_transcribers(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=3)
    async with aiohttp.ClientSession() as http:
        sessions = [await _open(http, tree) for _ in range(3)]
        on_last = next(ws for ws, actor in sessions if actor == "transcriber-2")
        victim = await tree.actor("transcriber-2")
        # Audio that transcriber-2 has accepted but not transcribed when it is removed.
        await stall_actor(on_last, victim["pid"], chunks=3, size=100)
        os.kill(victim["pid"], signal.SIGCONT)  # it must hear SIGTERM and stop cleanly
        code, out = await tree.cli("scale", "transcriber=2")
        assert code == 0, out
        replies = await replies_until(on_last, lambda r: count(r, "transcript") == 3)
        assert [r["seq"] for r in replies if r["status"] == "transcript"] == [1, 2, 3]
        await on_last.send_bytes(b"\x00" * 50)  # the session goes on where it moved
        await replies_until(on_last, lambda r: count(r, "transcript") == 1)
        for ws, _ in sessions:
            await ws.close()
    names = {a["name"] for a in (await tree.status())["actors"]}
    assert "transcriber-2" not in names and {"transcriber-0", "transcriber-1"} <= names
    assert (await tree.status())["healthy"]


async def test_a_drained_transcriber_gets_no_new_sessions_until_undrained(tree: Tree) -> None:
    code, out = await tree.cli("drain", "transcriber-0")
    assert code == 0, out
    assert (await tree.actor("transcriber-0"))["draining"] is True
    await tree.gateway_stats(lambda s: s["draining_transcribers"] == ["transcriber-0"])
    async with aiohttp.ClientSession() as http:
        sessions = [await _open(http, tree) for _ in range(4)]
        assert {actor for _, actor in sessions} == {"transcriber-1"}
        for ws, _ in sessions:
            await ws.close()
        code, out = await tree.cli("drain", "transcriber-0", "--off")
        assert code == 0, out
        await tree.wait_audit(lambda e: e["event"] == "actor_undrain", from_start=True)
        assert (await tree.actor("transcriber-0"))["draining"] is False
        await tree.gateway_stats(lambda s: s["draining_transcribers"] == [])
        ws, actor = await _open(http, tree)
        assert actor == "transcriber-0"  # back in rotation, and the least loaded
        await ws.close()


async def test_restart_starts_a_new_incarnation_without_counting_as_a_crash(tree: Tree) -> None:
    before = await tree.actor("transcriber-1")
    code, out = await tree.cli("restart", "transcriber-1")
    assert code == 0, out
    after = await tree.actor("transcriber-1")
    assert after["state"] == "RUNNING" and after["pid"] != before["pid"]
    assert after["restarts"] == before["restarts"] + 1
    assert after["last_exit"] == "exit 0"  # it stopped on SIGTERM, not killed
    entry = await tree.wait_audit(lambda e: e["event"] == "actor_restart", from_start=True)
    assert entry["reason"] == "requested"
    code, out = await tree.cli("restart", "nobody")
    assert code == 1 and "no actor named 'nobody'" in out
    code, out = await tree.cli("scale", "gateway=2")
    assert code == 1 and "only the transcriber pool scales" in out
    code, out = await tree.cli("drain", "gateway")
    assert code == 1 and "only transcribers drain" in out


async def test_with_an_admin_token_changes_need_it_and_reads_do_not(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, env={"HARK_ADMIN_TOKEN": TOKEN})
    url = f"{tree.status_url}/actors/transcriber-0/drain"
    async with aiohttp.ClientSession() as http:
        async with http.post(url) as resp:
            assert resp.status == 401
            assert (await resp.json())["code"] == "unauthorized"
        async with http.post(url, headers={"Authorization": "Bearer wrong-token-0123456"}) as resp:
            assert resp.status == 401
        async with http.post(f"{tree.status_url}/scale", json={"transcriber": 3}) as resp:
            assert resp.status == 401
        async with http.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["draining"] is True
        async with http.get(f"{tree.status_url}/status") as resp:
            assert resp.status == 200  # reading needs no token
    code, out = await tree.cli("drain", "transcriber-1")  # the test's env has no token
    assert code == 1 and "Bearer" in out
    assert (await _states(tree))["transcriber-1"] == "RUNNING"
