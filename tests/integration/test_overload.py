"""Admission control: a full gateway and a transcriber far behind refuse work early."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.gateway.app import GATEWAY
from shared import keys
from shared.actor import ActorRuntime
from shared.config import Settings
from shared.messages import AudioChunk, decode_as
from shared.tasks import cancel_and_wait
from tests.integration.gateway_fixtures import LIMIT, open_session, receive

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    return Settings(redis_url=redis_url, max_chunk_bytes=LIMIT, heartbeat_interval=0.2,
                    max_sessions=2, max_lag=1.0, max_busy=0.9)  # fmt: skip


class Lagging:
    """The heartbeats of a transcriber that reads nothing, beating as the real actor
    does, through its heartbeat code; the test sets how far behind it says it is."""

    def __init__(self, runtime: ActorRuntime) -> None:
        self.runtime = runtime
        self.lag_ms = 0
        self.load, self.busy, self.cost = 1, 0.0, 0.0
        self.beating = True  # False: its last beat stands (one on its way, as it were)

    async def beat_forever(self) -> None:
        while True:
            if self.beating:
                await self.runtime.beat("running", self.load, self.lag_ms, self.busy, self.cost)
            await asyncio.sleep(self.runtime.settings.heartbeat_interval / 2)


@pytest.fixture
async def transcriber(settings: Settings, redis: Redis) -> AsyncIterator[Lagging]:
    actor = Lagging(ActorRuntime(settings, redis, "transcriber-0", "transcriber"))
    await actor.runtime.register()
    await actor.runtime.beat("running", 0)
    task = asyncio.create_task(actor.beat_forever())
    yield actor
    await cancel_and_wait(task)


async def refused(gateway: TestClient[Any, Any]) -> dict[str, Any]:
    """The 503 a new connection gets; its body and Retry-After checked."""
    resp = await gateway.get("/ws")
    assert resp.status == 503
    assert int(resp.headers["Retry-After"]) >= 1
    body: dict[str, Any] = await resp.json()
    assert (body["status"], body["code"]) == ("error", "overloaded")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
        await gateway.ws_connect("/ws")
    assert refusal.value.status == 503
    return body


async def says_behind(gateway: TestClient[Any, Any], transcriber: Lagging, lag_ms: int) -> None:
    """The transcriber says it is `lag_ms` behind, and the gateway has read it (its
    router reads the beats once per heartbeat interval on its own)."""
    transcriber.lag_ms = lag_ms
    await transcriber.runtime.beat(
        "running", transcriber.load, lag_ms, transcriber.busy, transcriber.cost
    )
    await gateway.app[GATEWAY].router.refresh()


async def test_a_full_gateway_answers_503_and_takes_sessions_again_once_one_ends(
    gateway: TestClient[Any, Any], transcriber: Lagging
) -> None:
    first, hello = await open_session(gateway)
    second, _ = await open_session(gateway)
    body = await refused(gateway)
    assert "2 sessions" in body["error"]
    # The sessions held are not disturbed.
    await second.send_bytes(b"\x00" * 320)
    assert (await receive(second))["status"] == "received"
    held = gateway.app[GATEWAY].sessions[hello["session_id"]]
    await first.close()
    await asyncio.wait_for(held.ended.wait(), 10)
    third, hello = await open_session(gateway)
    assert hello["status"] == "ready"
    await third.close()
    await second.close()


async def test_a_transcriber_far_behind_gets_no_sessions_and_no_audio_until_it_catches_up(
    gateway: TestClient[Any, Any], transcriber: Lagging
) -> None:
    ws, _ = await open_session(gateway)
    await ws.send_bytes(b"\x00" * 320)
    assert (await receive(ws))["status"] == "received"

    # Behind by more than HARK_MAX_LAG: new sessions are refused, audio still taken.
    await says_behind(gateway, transcriber, 1500)
    body = await refused(gateway)
    assert "behind" in body["error"]
    await ws.send_bytes(b"\x00" * 320)
    assert (await receive(ws))["status"] == "received"

    # Past twice the limit: its audio is refused, not stored, and said so.
    await says_behind(gateway, transcriber, 2500)
    await ws.send_bytes(b"\x00" * 320)
    reply = await receive(ws)
    assert reply["code"] == "overloaded" and "send it again" in reply["error"]
    stored = (await (await gateway.get("/stats")).json())["chunks"]

    # Caught up: audio and sessions are taken again, the seq going on from the last stored.
    await says_behind(gateway, transcriber, 0)
    second, _ = await open_session(gateway)
    await ws.send_bytes(b"\x00" * 320)
    ack = await receive(ws)
    assert (ack["status"], ack["seq"]) == ("received", stored + 1)
    await ws.close()
    await second.close()


async def test_audio_redis_does_not_take_sends_the_client_to_resume_from_the_last_stored(
    gateway: TestClient[Any, Any], transcriber: Lagging, redis: Redis
) -> None:
    # Chunk 2 cannot be stored while chunks 3 and 4 are on their way: the gateway cannot
    # tell them from resends (they were stored as 2 and 3 once: audio misplaced), so it
    # names the first chunk not stored, closes 1013, and the resume says where to go on.
    ws, hello = await open_session(gateway)
    await ws.send_bytes(b"\x01" * 320)
    assert (await receive(ws))["seq"] == 1
    # The mailbox (chunk 1 in it) set aside and a string in its place: each XADD to it
    # fails on its own (WRONGTYPE).
    mailbox = keys.mailbox(transcriber.runtime.name)
    await redis.rename(mailbox, "aside")
    await redis.set(mailbox, "not a stream")
    for byte in (b"\x02", b"\x03", b"\x04"):
        await ws.send_bytes(byte * 320)
    reply = await receive(ws)
    assert (reply["code"], reply["seq"], reply["last_seq"]) == ("unavailable", 2, 1), reply
    assert "resume" in reply["error"]
    while (msg := await ws.receive(timeout=10)).type == aiohttp.WSMsgType.TEXT:
        assert json.loads(msg.data)["code"] in ("session_closing", "unavailable"), msg.data
    assert ws.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
    await redis.delete(mailbox)
    await redis.rename("aside", mailbox)
    query = f"?session_id={hello['session_id']}&resume_token={hello['resume_token']}"
    ws, resumed = await open_session(gateway, query)
    assert (resumed["status"], resumed["last_seq"]) == ("resumed", 1)
    await ws.send_bytes(b"\x02" * 320)
    assert (await receive(ws))["seq"] == 2
    stored = [decode_as(AudioChunk, f[b"m"]) for _, f in await redis.xrange(mailbox)]
    assert [(c.seq, c.data[:1]) for c in stored] == [(1, b"\x01"), (2, b"\x02")]
    await ws.close()


async def test_a_transcriber_with_no_room_for_another_speaker_gets_no_new_session(
    gateway: TestClient[Any, Any], transcriber: Lagging
) -> None:
    # Its engine decodes half the time for two sessions: a third would take 75 %, under
    # HARK_MAX_BUSY (0.9), and is let in. At 70 % for two, a third would take 105 %:
    # refused with 503 while the sessions it has go on.
    transcriber.load, transcriber.busy = 2, 0.5
    await says_behind(gateway, transcriber, 0)
    ws, hello = await open_session(gateway)
    assert hello["status"] == "ready"
    transcriber.busy = 0.7
    await says_behind(gateway, transcriber, 0)
    body = await refused(gateway)
    assert "no room for another speaker" in body["error"]
    await ws.send_bytes(b"\x00" * 320)
    assert (await receive(ws))["status"] == "received"
    await ws.close()


async def test_a_transcriber_busy_only_with_sessions_gone_takes_a_new_one(
    gateway: TestClient[Any, Any], transcriber: Lagging
) -> None:
    # After a burst its engine still decodes the finals of sessions that have left:
    # busy, with no session to price one by. A new speaker must not be turned away.
    transcriber.load, transcriber.busy = 0, 0.95
    await says_behind(gateway, transcriber, 0)
    ws, hello = await open_session(gateway)
    assert hello["status"] == "ready"
    await ws.close()


async def test_a_clients_next_session_right_after_its_last_is_not_refused_by_a_stale_beat(
    gateway: TestClient[Any, Any], transcriber: Lagging
) -> None:
    # A session sent its audio in a burst: its transcriber's beat says one session and
    # busy 95 % (no cost learnt: a saturated engine learns none). Another is refused.
    transcriber.load = 0
    await says_behind(gateway, transcriber, 0)
    first, hello = await open_session(gateway)
    transcriber.load, transcriber.busy = 1, 0.95
    await says_behind(gateway, transcriber, 0)
    await refused(gateway)
    # The session ends; the transcriber's next beat, which would say so, has not come.
    transcriber.beating = False
    held = gateway.app[GATEWAY].sessions[hello["session_id"]]
    await first.close()
    await asyncio.wait_for(held.ended.wait(), 10)
    await gateway.app[GATEWAY].router.refresh()
    second, hello = await open_session(gateway)
    assert hello["status"] == "ready"
    await second.close()


async def test_sessions_are_priced_at_what_a_second_of_audio_has_cost(
    gateway: TestClient[Any, Any], transcriber: Lagging
) -> None:
    # Two sessions, one second of audio costing 0.25 s of decoding: a third would take
    # 75 %, let in, whatever the busy share says now (95 % as it works off a burst).
    transcriber.load, transcriber.busy, transcriber.cost = 2, 0.95, 0.25
    await says_behind(gateway, transcriber, 0)
    ws, hello = await open_session(gateway)
    assert hello["status"] == "ready"
    # Sessions just come cost nothing yet (busy 10 %), but a second of audio costs
    # 0.35 s: a fourth would take 140 %, refused.
    transcriber.load, transcriber.busy, transcriber.cost = 3, 0.1, 0.35
    await says_behind(gateway, transcriber, 0)
    body = await refused(gateway)
    assert "no room for another speaker" in body["error"]
    await ws.close()
