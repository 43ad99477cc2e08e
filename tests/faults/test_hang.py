"""A transcriber whose loop stops (SIGSTOP) is found HUNG by its missed heartbeats and replaced."""

from __future__ import annotations

import contextlib
import os
import signal

import aiohttp
import pytest

from tests.conftest import TreeFactory
from tests.tree import count, replies_until, stall_actor

pytestmark = pytest.mark.timeout(60)


async def test_stopped_transcriber_is_reported_hung_killed_and_replaced_without_loss(
    start_tree: TreeFactory, redis_url: str
) -> None:
    # Beats every 0.5 s (the harness's setting), HUNG after 3 missed, then SIGKILL at once:
    # it cannot drain (SIGTERM and the whole shutdown timeout, 5 s, came first before).
    tree = await start_tree(redis_url=redis_url)
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        hello = await ws.receive_json(timeout=10)
        name = hello["actor"]
        before = await tree.actor(name)
        try:
            await stall_actor(ws, before["pid"], chunks=5, size=320)  # audio waits in its mailbox
            hung = await tree.wait_audit(
                lambda e: e["event"] == "actor_hung" and e["child"] == name
            )
            back = await tree.wait_audit(
                lambda e: e["event"] == "actor_ready" and e["child"] == name
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(before["pid"], signal.SIGCONT)  # leave nothing frozen behind
        replies = await replies_until(ws, lambda r: count(r, "transcript") == 5)
    assert [r["seq"] for r in replies if r["status"] == "transcript"] == [1, 2, 3, 4, 5]
    assert int(hung["pid"]) == before["pid"]
    after = await tree.actor(name)
    assert after["pid"] != before["pid"] and after["state"] == "RUNNING"
    assert after["restarts"] == 1 and after["last_exit"] == "HUNG; killed by SIGKILL"
    replaced_s = float(back["ts"]) - float(hung["ts"])
    print(f"hung -> replacement ready: {replaced_s:.2f} s")
    assert replaced_s < 3.0, replaced_s
