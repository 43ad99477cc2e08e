"""`--log-format json`: every line of every actor is a JSON object naming its actor,
and the lines about a session name that session."""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.conftest import TreeFactory
from tests.tree import count, replies_until

pytestmark = pytest.mark.timeout(60)


async def test_json_logs_name_the_actor_and_the_session_on_every_line(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, env={"HARK_LOG_FORMAT": "json"})
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        sid = (await ws.receive_json(timeout=10))["session_id"]
        await ws.send_bytes(b"\x00" * 320)
        await ws.send_str("{not json")  # an error line about this session
        await replies_until(ws, lambda r: count(r, "transcript") == 1 and count(r, "error") == 1)
    assert await tree.stop() == 0
    lines = tree.log_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # each line parses, or this fails
    assert {"time", "level", "actor", "session", "logger", "message"} <= set(records[0])
    actors = {r["actor"] for r in records}
    assert {"supervisor", "gateway", "transcriber-0", "transcriber-1"} <= actors
    about = [r for r in records if sid in r["message"]]
    assert len(about) >= 3  # open, the client error, close
    assert {r["session"] for r in about} == {sid}
    assert {r["actor"] for r in about} == {"gateway"}
    assert all(r["session"] is None for r in records if r["actor"] == "supervisor")
