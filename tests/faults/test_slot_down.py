"""A transcriber that stays down: its sessions move to a live one, with their pending audio."""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest

from tests.conftest import TreeFactory
from tests.tree import count, replies_until, stall_actor

pytestmark = pytest.mark.timeout(60)


async def test_sessions_of_a_fatal_transcriber_move_with_their_uncommitted_audio(
    start_tree: TreeFactory, redis_url: str
) -> None:
    # Intensity 0: the first crash is one too many, so the slot stays down.
    tree = await start_tree(redis_url=redis_url, env={"HARK_RESTART_INTENSITY": "0"})
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        hello = await ws.receive_json(timeout=10)
        sid, doomed = hello["session_id"], hello["actor"]
        survivor = next(n for n in ("transcriber-0", "transcriber-1") if n != doomed)
        for _ in range(3):
            await ws.send_bytes(b"\x00" * 100)
        await replies_until(ws, lambda r: count(r, "transcript") == 3)

        victim = await tree.actor(doomed)
        await stall_actor(ws, victim["pid"], chunks=5, size=200)  # piles up uncommitted
        os.kill(victim["pid"], signal.SIGKILL)

        # The supervisor and the gateway write these; either may come first in the log.
        died = await tree.wait_audit(
            lambda e: e["event"] == "actor_exit" and e["child"] == doomed, from_start=True
        )
        moved = await tree.wait_audit(
            lambda e: e["event"] == "session_moved" and e.get("session") == sid, from_start=True
        )
        replies = await replies_until(ws, lambda r: count(r, "transcript") == 5)
        await ws.send_bytes(b"\x00" * 300)  # and the session goes on there
        more = await replies_until(ws, lambda r: count(r, "transcript") == 1)

    assert [r["seq"] for r in replies if r["status"] == "transcript"] == [4, 5, 6, 7, 8]
    assert [r["seq"] for r in more if r["status"] == "transcript"] == [9]
    assert (moved["source"], moved["target"], moved["entries"]) == (doomed, survivor, "5")
    delay = float(moved["ts"]) - float(died["at"])  # "at": when the exit happened
    print(f"death -> session moved: {delay * 1000:.0f} ms")
    assert delay < 3.0
    by = {int(e["seq"]): e["actor"] for e in await tree.audit()
          if e["event"] == "transcript" and e.get("session") == sid}  # fmt: skip
    assert {by[seq] for seq in range(4, 10)} == {survivor}
    assert (await tree.actor(doomed))["state"] == "FATAL"
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        assert (await ws.receive_json(timeout=10))["actor"] == survivor  # nothing new goes there
