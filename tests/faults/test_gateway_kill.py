"""The gateway SIGKILLed mid-stream: the client resumes and misses nothing, gets nothing twice."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from services.gateway.client import Client
from tests.conftest import TreeFactory

pytestmark = pytest.mark.timeout(90)

CHUNKS = 300


async def test_gateway_killed_mid_stream_the_client_resumes_and_loses_nothing(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url)
    before = await tree.actor("gateway")
    replies: list[dict[str, Any]] = []
    killed: list[int] = []

    def on_reply(reply: dict[str, Any]) -> None:
        replies.append(reply)
        # Killed from the reply callback, before the client sends another frame: from a
        # task of its own the kill could come after the client had sent everything and
        # its close (the client reads queued replies without yielding), which is no
        # longer mid-stream.
        if reply["status"] == "transcript" and reply["seq"] == CHUNKS // 3 and not killed:
            os.kill(before["pid"], signal.SIGKILL)
            killed.append(before["pid"])

    client = Client(tree.ws_url, window=20)
    chunks = [b"\x00" * (100 + seq % 50) for seq in range(1, CHUNKS + 1)]
    summary = await asyncio.wait_for(client.run(chunks, on_reply), 60)

    finals = [r for r in replies if r["status"] == "transcript" and r["final"]]
    assert [f["seq"] for f in finals] == list(range(1, CHUNKS + 1))
    sizes = [int(f["text"].rsplit("size: ", 1)[1].split()[0]) for f in finals]
    assert sizes == [100 + seq % 50 for seq in range(1, CHUNKS + 1)]
    assert summary["status"] == "closed" and summary["last_seq"] == CHUNKS
    # The fault happened and was survived the intended way.
    assert client.resumes >= 1
    resumed = [r for r in replies if r["status"] == "resumed"]
    assert resumed and resumed[0]["session_id"] == replies[0]["session_id"]
    after = await tree.actor("gateway")
    assert after["pid"] != before["pid"] and after["restarts"] == 1
    events = [e["event"] for e in await tree.audit() if e.get("session") == client.session_id]
    assert "session_resume" in events
    print(f"resumed at last_seq={resumed[0]['last_seq']}, {resumed[0]['replayed']} finals replayed")
