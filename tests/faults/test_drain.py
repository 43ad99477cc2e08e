"""SIGTERM to `hark up`: the gateway drains before anything stops; nothing acked is lost."""

from __future__ import annotations

import contextlib
import os
import signal

import aiohttp
import pytest

from tests.conftest import TreeFactory
from tests.tree import count, stall_actor

pytestmark = pytest.mark.timeout(60)


async def test_sigterm_drains_in_flight_audio_before_the_tree_stops(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url)
    assert tree.proc is not None
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        hello = await ws.receive_json(timeout=10)
        actor = await tree.actor(hello["actor"])
        try:
            await stall_actor(ws, actor["pid"], chunks=5, size=100)  # acked audio in flight
            tree.proc.send_signal(signal.SIGTERM)
            drain = await tree.wait_audit(lambda e: e["event"] == "gateway_drain")
            assert drain["busy"] == "1"
            await ws.send_bytes(b"\x00" * 100)  # too late: refused, not acked
            async with http.ws_connect(tree.ws_url) as late:  # so is a new session
                refusal = await late.receive_json(timeout=10)
                await late.receive(timeout=10)
            assert refusal["code"] == "shutting_down"
            assert late.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(actor["pid"], signal.SIGCONT)  # the transcriber catches up now
        replies = []
        async for msg in ws:
            replies.append(msg.json())
        close_code = ws.close_code
    assert [r["seq"] for r in replies if r["status"] == "transcript"] == [1, 2, 3, 4, 5]
    assert [r["code"] for r in replies if r["status"] == "error"] == ["shutting_down"]
    assert count(replies, "received") == 0
    assert close_code == aiohttp.WSCloseCode.GOING_AWAY
    assert await tree.stop() == 0
