"""The gateway's client protocol, with a real Redis and a real transcriber in this process."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from services.gateway import client, resume
from services.gateway import gateway as gateway_module
from services.transcriber.actor import Transcriber
from services.transcriber.engines.mock import MockEngine
from shared import keys
from shared.config import Settings
from shared.messages import SessionControl
from shared.tasks import Event
from tests.integration.gateway_fixtures import (
    LIMIT,
    HeldEngine,
    closed_mark,
    gateway_of,
    open_session,
    receive,
)

pytestmark = pytest.mark.timeout(30)


@pytest.mark.usefixtures("transcriber")
async def test_greeting_comes_first_with_server_issued_ids_and_settings(
    gateway: TestClient[Any, Any],
) -> None:
    ws, hello = await open_session(gateway, "?encoding=pcm_s16le&sample_rate=8000&interim=false")
    assert hello["status"] == "ready"
    assert len(hello["session_id"]) == len(hello["client_id"]) == 32  # 128 bits, hex
    assert hello["session_id"] != hello["client_id"]
    assert len(hello["resume_token"]) >= 32
    assert (hello["encoding"], hello["sample_rate"], hello["interim"]) == ("pcm_s16le", 8000, False)
    await ws.close()


@pytest.mark.usefixtures("transcriber")
async def test_permessage_deflate_is_declined(gateway: TestClient[Any, Any]) -> None:
    # Browsers offer it; its state costs ~100 KB a connection (bench/RESULTS.md), for
    # replies of a hundred bytes. Declined, the session goes on uncompressed.
    ws = await gateway.ws_connect("/ws", compress=15)
    assert ws.compress == 0
    assert (await receive(ws))["status"] == "ready"
    await ws.send_bytes(b"\x01" * 320)
    assert (await receive(ws))["status"] == "received"
    await ws.close()


@pytest.mark.usefixtures("transcriber")
async def test_each_chunk_gets_one_ack_then_one_final_in_order(
    gateway: TestClient[Any, Any],
) -> None:
    ws, hello = await open_session(gateway)
    for size in (3200, 100, 1):
        await ws.send_bytes(b"\x01" * size)
    replies = [await receive(ws) for _ in range(6)]
    acks = [r for r in replies if r["status"] == "received"]
    finals = [r for r in replies if r["status"] == "transcript"]
    assert [(a["seq"], a["size"]) for a in acks] == [(1, 3200), (2, 100), (3, 1)]
    assert [f["seq"] for f in finals] == [1, 2, 3]
    for f, size in zip(finals, (3200, 100, 1), strict=True):
        assert f["client_id"] == hello["client_id"] and f["final"] is True
        assert f["text"].startswith("Transcribed: ") and f["text"].endswith(f"(size: {size} bytes)")
    for seq in (1, 2, 3):  # a chunk's ack always precedes its transcript
        ack_at = replies.index(next(r for r in acks if r["seq"] == seq))
        final_at = replies.index(next(r for r in finals if r["seq"] == seq))
        assert ack_at < final_at
    await ws.close()


@pytest.mark.usefixtures("transcriber")
@pytest.mark.parametrize(
    ("send", "code"),
    [
        (("bytes", b""), "empty_frame"),
        (("bytes", b"\x00" * (LIMIT + 1)), "chunk_too_large"),
        (("str", "{oops"), "bad_json"),
        (("str", '"just a string"'), "bad_message"),
        (("str", '{"type": "dance"}'), "unknown_message"),
        (("str", '{"type": "start", "encoding": "opus"}'), "bad_setting"),
    ],
    ids=["empty", "oversize", "malformed-json", "not-an-object", "unknown-type", "bad-encoding"],
)
async def test_bad_frame_gets_a_coded_error_and_the_session_goes_on(
    gateway: TestClient[Any, Any], send: tuple[str, Any], code: str
) -> None:
    ws, _ = await open_session(gateway)
    kind, payload = send
    await (ws.send_bytes(payload) if kind == "bytes" else ws.send_str(payload))
    error = await receive(ws)
    assert error["status"] == "error" and error["code"] == code and error["error"]
    await ws.send_bytes(b"\x00" * 10)
    ack = await receive(ws)
    assert (ack["status"], ack["seq"]) == ("received", 1)  # a refused frame uses no seq
    assert (await receive(ws))["status"] == "transcript"
    await ws.close()


@pytest.mark.usefixtures("transcriber")
async def test_frame_far_over_the_limit_is_refused_before_buffering(
    gateway: TestClient[Any, Any],
) -> None:
    ws, _ = await open_session(gateway)
    await ws.send_bytes(b"\x00" * (2 * LIMIT + 1))
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


@pytest.mark.usefixtures("transcriber")
async def test_start_frame_changes_the_format_before_audio_only(
    gateway: TestClient[Any, Any],
) -> None:
    ws, _ = await open_session(gateway)
    await ws.send_str(json.dumps({"type": "start", "encoding": "pcm_f32le", "sample_rate": 48000}))
    hello = await receive(ws)
    assert (hello["status"], hello["encoding"], hello["sample_rate"]) == (
        "ready",
        "pcm_f32le",
        48000,
    )
    await ws.send_bytes(b"\x00" * 8)
    assert (await receive(ws))["status"] == "received"
    await ws.send_str(json.dumps({"type": "start"}))
    replies = [await receive(ws) for _ in range(2)]
    assert any(r["status"] == "error" and r["code"] == "bad_setting" for r in replies)
    await ws.close()


@pytest.mark.usefixtures("transcriber")
async def test_finalize_is_confirmed_and_close_sends_a_summary_after_every_final(
    gateway: TestClient[Any, Any],
) -> None:
    ws, _ = await open_session(gateway)
    await ws.send_bytes(b"\x00" * 100)
    await ws.send_str('{"type": "keepalive"}')
    await ws.send_str('{"type": "finalize"}')
    await ws.send_bytes(b"\x00" * 100)
    await ws.send_str('{"type": "close"}')
    replies = []
    async for msg in ws:
        replies.append(json.loads(msg.data))
    statuses = [r["status"] for r in replies]
    assert statuses.count("received") == 2 and statuses.count("transcript") == 2
    assert {"status": "finalized", "seq": 1} in replies
    assert statuses[-1] == "closed"
    summary = replies[-1]
    assert (summary["chunks"], summary["finals"], summary["complete"]) == (2, 2, True)
    assert ws.close_code == aiohttp.WSCloseCode.OK


async def test_no_transcriber_running_refuses_the_session_instead_of_acking(
    gateway: TestClient[Any, Any],
) -> None:
    ws, reply = await open_session(gateway)
    assert (reply["status"], reply["code"]) == ("error", "no_transcriber")
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER


@pytest.mark.usefixtures("transcriber")
async def test_bad_query_setting_refuses_the_session(gateway: TestClient[Any, Any]) -> None:
    ws, reply = await open_session(gateway, "?sample_rate=banana")
    assert (reply["status"], reply["code"]) == ("error", "bad_setting")
    await ws.receive(timeout=10)
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


@pytest.mark.usefixtures("transcriber")
async def test_session_is_recorded_and_audited(gateway: TestClient[Any, Any], redis: Redis) -> None:
    ws, hello = await open_session(gateway)
    await ws.send_bytes(b"\x00" * 10)
    await receive(ws)
    await receive(ws)
    await ws.close()
    record = await redis.hgetall(keys.session(hello["session_id"]))
    assert record[b"client_id"].decode() == hello["client_id"]
    assert hello["resume_token"].encode() not in b"".join(record.values())  # only its hash
    events = [(f[b"event"], f.get(b"session")) for _, f in await redis.xrange(keys.AUDIT)]
    sid = hello["session_id"].encode()
    assert (b"session_open", sid) in events and (b"transcript", sid) in events


@pytest.mark.usefixtures("transcriber")
async def test_http_endpoints_answer_as_the_original_service_did(
    gateway: TestClient[Any, Any],
) -> None:
    page = await gateway.get("/")
    assert page.status == 200 and "text/html" in page.headers["Content-Type"]
    status = await gateway.get("/", headers={"Accept": "application/json"})
    assert (await status.json())["message"] == "WebSocket Service is running"
    assert (await (await gateway.get("/health")).json())["status"] == "ok"
    ready = await gateway.get("/ready")
    assert ready.status == 200 and (await ready.json())["transcribers"] == ["transcriber-0"]
    config = await (await gateway.get("/config")).json()
    assert config["max_chunk_bytes"] == LIMIT


async def _session_with_finals(gateway: TestClient[Any, Any], n: int) -> dict[str, Any]:
    """A session that sent `n` chunks and got their finals, then lost its connection."""
    ws, hello = await open_session(gateway)
    for _ in range(n):
        await ws.send_bytes(b"\x00" * 10)
    for _ in range(2 * n):
        await receive(ws)
    await ws.close()  # no "close" message: the session stays resumable
    return hello


def _resume_query(hello: dict[str, Any], last_final: int, token: str | None = None) -> str:
    token = hello["resume_token"] if token is None else token
    return f"?session_id={hello['session_id']}&resume_token={token}&last_final={last_final}"


@pytest.mark.usefixtures("transcriber")
async def test_resume_replays_missed_finals_then_carries_on_numbering(
    gateway: TestClient[Any, Any],
) -> None:
    hello = await _session_with_finals(gateway, 3)
    ws, back = await open_session(gateway, _resume_query(hello, last_final=1))
    assert back["status"] == "resumed"
    assert (back["session_id"], back["client_id"]) == (hello["session_id"], hello["client_id"])
    assert (back["last_seq"], back["replayed"]) == (3, 2)
    replayed = [await receive(ws) for _ in range(2)]
    assert [(r["seq"], r["replayed"]) for r in replayed] == [(2, True), (3, True)]
    await ws.send_bytes(b"\x00" * 10)
    ack, final = await receive(ws), await receive(ws)
    assert (ack["status"], ack["seq"], final["seq"]) == ("received", 4, 4)
    await ws.close()


@pytest.mark.usefixtures("transcriber")
async def test_resume_is_refused_alike_for_a_wrong_token_and_an_unknown_session(
    gateway: TestClient[Any, Any],
) -> None:
    hello = await _session_with_finals(gateway, 1)
    replies = []
    for query in (_resume_query(hello, 0, token="x" * 43),
                  _resume_query({**hello, "session_id": "0" * 32}, 0)):  # fmt: skip
        ws, reply = await open_session(gateway, query)
        await ws.receive(timeout=10)
        assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
        replies.append(reply)
    assert replies[0] == replies[1]
    assert (replies[0]["status"], replies[0]["code"]) == ("error", "bad_resume")


@pytest.mark.usefixtures("transcriber")
async def test_a_closed_session_resumed_replays_what_was_missed_then_its_summary(
    gateway: TestClient[Any, Any],
) -> None:
    # The client closed and got its summary, but says it has only the first final (as
    # one whose connection dropped while they came would): it gets the others, the
    # summary again, and the connection closes normally. No audio is taken any more.
    ws, hello = await open_session(gateway)
    for _ in range(3):
        await ws.send_bytes(b"\x00" * 10)
    await ws.send_str('{"type": "close"}')
    assert [r["status"] async for r in _replies(ws)][-1] == "closed"
    ws, back = await open_session(gateway, _resume_query(hello, last_final=1))
    assert (back["status"], back["closed"], back["last_seq"], back["replayed"]) == (
        "resumed", True, 3, 2)  # fmt: skip
    replies = [r async for r in _replies(ws)]
    assert [(r["status"], r.get("seq")) for r in replies] == [
        ("transcript", 2), ("transcript", 3), ("closed", None)]  # fmt: skip
    assert replies[-1]["complete"] and replies[-1]["last_seq"] == 3
    assert ws.close_code == aiohttp.WSCloseCode.OK


@pytest.mark.usefixtures("transcriber")
async def test_a_closed_session_resumed_past_its_length_limit_is_not_ended_again(
    gateway: TestClient[Any, Any], redis: Redis
) -> None:
    # HARK_LIMIT_SESSION_S counts from the session's first opening, resumes included:
    # a closed one resumed past it still gets what it missed and its summary, not a
    # second, overlapping end with session_too_long.
    gw = gateway_of(gateway)
    gw.settings = replace(gw.settings, limit_session_s=3600)
    ws, hello = await open_session(gateway)
    await ws.send_bytes(b"\x00" * 10)
    await ws.send_str('{"type": "close"}')
    assert [r["status"] async for r in _replies(ws)][-1] == "closed"
    # Opened two hours ago, as far as the record says.
    await redis.hset(keys.session(hello["session_id"]), "created_at", time.time() - 7200)
    ws, back = await open_session(gateway, _resume_query(hello, last_final=0))
    assert (back["status"], back["closed"]) == ("resumed", True)
    replies = [r async for r in _replies(ws)]
    assert [(r["status"], r.get("seq")) for r in replies] == [
        ("transcript", 1),
        ("closed", None),
    ]


async def test_a_close_cut_off_during_its_flush_is_carried_on_by_the_resume(
    gateway: TestClient[Any, Any], held_engine: HeldEngine, redis: Redis
) -> None:
    # The client's connection is lost (the gateway has not noticed) while the close
    # waits for the transcriber's flush; the client resumes: the new connection gets
    # the flush's final and the summary, the old one is closed.
    engine = held_engine
    old, hello = await open_session(gateway)
    for _ in range(2):
        await old.send_bytes(b"\x00" * 10)
    assert [(await receive(old))["seq"] for _ in range(2)] == [1, 2]  # acks; no finals yet
    async with closed_mark(redis, hello["session_id"]) as marked:
        await old.send_str('{"type": "close"}')
        await marked()
    new, back = await open_session(gateway, _resume_query(hello, last_final=0))
    assert (back["status"], back["closed"], back["last_seq"], back["replayed"]) == (
        "resumed", True, 2, 0)  # fmt: skip
    closed = await old.receive(timeout=10)
    assert (closed.type, closed.data, closed.extra) == (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSCloseCode.POLICY_VIOLATION,
        "resumed elsewhere",
    )
    engine.release.set()
    replies = [r async for r in _replies(new)]
    assert [(r["status"], r.get("seq")) for r in replies] == [
        ("transcript", 2), ("closed", None)]  # fmt: skip
    assert replies[-1]["complete"] and new.close_code == aiohttp.WSCloseCode.OK


@pytest.mark.usefixtures("transcriber")
async def test_a_resume_that_lands_before_a_close_marks_the_record_resumes_a_closed_session(
    gateway: TestClient[Any, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client's close has begun (no more audio) but not yet reached the transcriber
    # nor marked the record when the client, its connection lost, resumes: the record it
    # reads says open. The resume must still come back closed (what it missed, the
    # summary, a normal close), not as a live session whose record then says closed.
    gw = gateway_of(gateway)
    entered, release = asyncio.Event(), asyncio.Event()
    control = gw.control

    async def held(session: Any, op: str) -> None:
        if op == "close":
            entered.set()
            await release.wait()
        await control(session, op)

    monkeypatch.setattr(gw, "control", held)
    old, hello = await open_session(gateway)
    await old.send_bytes(b"\x00" * 10)
    assert [(await receive(old))["status"] for _ in range(2)] == ["received", "transcript"]
    await old.send_str('{"type": "close"}')
    await entered.wait()
    resuming = asyncio.create_task(open_session(gateway, _resume_query(hello, last_final=1)))
    closed = await old.receive(timeout=10)  # taken over: the resume waits for it to end
    assert (closed.type, closed.extra) == (aiohttp.WSMsgType.CLOSE, "resumed elsewhere")
    release.set()
    new, back = await resuming
    assert (back["status"], back.get("closed"), back["last_seq"]) == ("resumed", True, 1)
    replies = [r async for r in _replies(new)]
    assert [(r["status"], r.get("seq")) for r in replies] == [("closed", None)]
    assert new.close_code == aiohttp.WSCloseCode.OK


async def _replies(ws: aiohttp.ClientWebSocketResponse) -> AsyncIterator[dict[str, Any]]:
    """The replies until the server closes the connection."""
    async for msg in ws:
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        yield json.loads(msg.data)


@pytest.mark.usefixtures("transcriber")
async def test_resume_takes_over_a_connection_that_is_still_open(
    gateway: TestClient[Any, Any],
) -> None:
    old, hello = await open_session(gateway)
    new, back = await open_session(gateway, _resume_query(hello, 0))
    assert back["status"] == "resumed" and back["last_seq"] == 0
    msg = await old.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    await new.send_bytes(b"\x00" * 10)
    assert (await receive(new))["seq"] == 1
    assert (await receive(new))["status"] == "transcript"
    await new.close()


async def test_session_moves_when_its_transcribers_heartbeat_vanishes(
    settings: Settings, gateway: TestClient[Any, Any], redis: Redis
) -> None:
    # Two transcribers, no supervisor: the gateway learns of the loss from the heartbeat alone.
    assert settings.redis_url is not None
    actors, stops, tasks = [], [], []
    for name in ("transcriber-0", "transcriber-1"):
        client = Redis.from_url(settings.redis_url)
        actor = Transcriber(settings, MockEngine(), client, name)
        stop = asyncio.Event()
        tasks.append(asyncio.create_task(actor.run(stop)))
        await asyncio.wait_for(actor.ready.wait(), 10)
        actors.append((actor, client))
        stops.append(stop)
    try:
        ws, hello = await open_session(gateway)
        assert hello["actor"] == "transcriber-0"
        stops[0].set()  # a clean stop removes its heartbeat key
        await asyncio.wait_for(tasks[0], 5)
        moved, last = None, b"0"
        while moved is None:  # the router reads heartbeats every half second
            for _, entries in await redis.xread({keys.AUDIT: last}, block=2000) or []:
                for entry_id, fields in entries:
                    last = entry_id
                    if fields[b"event"] == b"session_moved":
                        moved = fields
        assert moved[b"target"] == b"transcriber-1"
        await ws.send_bytes(b"\x00" * 10)
        assert (await receive(ws))["status"] == "received"
        assert (await receive(ws))["status"] == "transcript"
        await ws.close()
    finally:
        stops[1].set()
        await asyncio.wait_for(tasks[1], 5)
        for _, client in actors:
            await client.aclose()


@pytest.mark.usefixtures("transcriber")
async def test_vosk_protocol_one_reply_per_frame_and_eof_brings_the_rest(
    gateway: TestClient[Any, Any],
) -> None:
    # As vosk's own example clients do: config, then frame/reply pairs, then eof.
    ws = await gateway.ws_connect("/vosk")
    await ws.send_str(json.dumps({"config": {"sample_rate": 8000}}))
    replies = []
    for size in (100, 200, 300, 400):
        await ws.send_bytes(b"\x00" * size)
        replies.append(await receive(ws))  # exactly one, at once
    await ws.send_str('{"eof" : 1}')
    last = await receive(ws)
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    for reply in replies:
        assert set(reply) in ({"partial"}, {"result", "text"}), reply
    said = " ".join([r["text"] for r in replies if "text" in r] + [last["text"]])
    # Every chunk's result once, in order, whether in a frame's reply or in eof's.
    assert re.findall(r"size: (\d+) bytes", said) == ["100", "200", "300", "400"]
    assert "result" in last and "partial" not in last


@pytest.mark.usefixtures("transcriber")
async def test_finals_published_while_pubsub_reconnects_are_sent_from_the_store(
    gateway: TestClient[Any, Any], redis: Redis
) -> None:
    ws, _ = await open_session(gateway)
    await ws.send_bytes(b"\x00" * 10)
    assert {(await receive(ws))["status"] for _ in range(2)} == {"received", "transcript"}
    # The gateway's Pub/Sub connection drops; the next final is published before it is
    # back (the hub waits a moment before reconnecting), so only the store has it.
    assert await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 1
    await ws.send_bytes(b"\x00" * 10)
    replies = [await receive(ws) for _ in range(2)]
    assert [(r["status"], r["seq"]) for r in replies] == [("received", 2), ("transcript", 2)]
    await ws.close()


@pytest.mark.usefixtures("transcriber")
async def test_a_session_redis_cannot_record_is_refused_and_leaves_nothing_behind(
    gateway: TestClient[Any, Any], redis: Redis
) -> None:
    gw = gateway_of(gateway)
    await redis.set(keys.AUDIT, "not a stream")  # the session_open entry fails: WRONGTYPE
    ws, reply = await open_session(gateway)
    assert (reply["status"], reply["code"]) == ("error", "unavailable")
    assert (await ws.receive(timeout=10)).type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.TRY_AGAIN_LATER
    assert gw.sessions == {} and gw.hub.channels == 0
    assert dict(gw.router.assigned) == {}
    writers = [t for t in asyncio.all_tasks() if t.get_name().startswith("ws-writer-")]
    if writers:
        await asyncio.wait(writers, timeout=5)  # cancelled: done at their next step
    assert all(t.done() for t in writers), writers
    await redis.delete(keys.AUDIT)
    ws, hello = await open_session(gateway)  # and the next one opens
    assert hello["status"] == "ready"
    await ws.close()


async def test_a_close_is_pending_while_its_entry_waits_and_an_end_is_not(redis: Redis) -> None:
    # What a resumed closed session waits on (close_pending): the close's entry, not the
    # end the old connection's gateway sends after it (nothing answers an end: a resume
    # that waited on it waited the flush timeout and said "complete": false).
    mailbox = keys.mailbox("transcriber-9")
    for op in ("end", "close"):
        control = SessionControl("s1", "c1", 3, op)
        await redis.xadd(mailbox, {"m": control.encode()})
        assert await resume.close_pending(redis, "transcriber-9", "s1") == (op == "close")
    assert not await resume.close_pending(redis, "transcriber-9", "s2")


class _Watched(Event):
    """An Event that says when something begins to wait on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = asyncio.Event()

    async def wait(self) -> Literal[True]:
        self.waited.set()
        return await super().wait()


async def _end_by_operator(gateway: TestClient[Any, Any], session_id: str) -> dict[str, Any]:
    async with gateway.delete(f"/sessions/{session_id}") as resp:
        assert resp.status == 200
        summary: dict[str, Any] = await resp.json()
        return summary


async def test_an_operator_end_during_the_clients_close_sends_no_second_summary(
    gateway: TestClient[Any, Any], held_engine: HeldEngine, redis: Redis
) -> None:
    ws, hello = await open_session(gateway)
    sid = hello["session_id"]
    ended = gateway_of(gateway).sessions[sid].ended = _Watched()
    for _ in range(2):
        await ws.send_bytes(b"\x00" * 10)
    assert [(await receive(ws))["seq"] for _ in range(2)] == [1, 2]
    async with closed_mark(redis, sid) as marked:
        await ws.send_str('{"type": "close"}')
        await marked()  # the close waits for the held flush
    ending = asyncio.create_task(_end_by_operator(gateway, sid))
    await asyncio.wait_for(ended.waited.wait(), 10)  # the end waits for the close's end
    held_engine.release.set()
    replies = [r async for r in _replies(ws)]
    assert [(r["status"], r.get("seq")) for r in replies] == [("transcript", 2), ("closed", None)]
    assert ws.close_code == aiohttp.WSCloseCode.OK
    summary = await asyncio.wait_for(ending, 10)
    assert summary == {**replies[-1], "reason": "closed_by_client"}


async def test_a_clients_close_during_an_operator_end_sends_no_second_summary(
    gateway: TestClient[Any, Any], held_engine: HeldEngine, redis: Redis
) -> None:
    ws, hello = await open_session(gateway)
    sid = hello["session_id"]
    for _ in range(2):
        await ws.send_bytes(b"\x00" * 10)
    assert [(await receive(ws))["seq"] for _ in range(2)] == [1, 2]
    async with closed_mark(redis, sid) as marked:
        ending = asyncio.create_task(_end_by_operator(gateway, sid))
        await marked()  # the end waits for the held flush
    await ws.send_str('{"type": "close"}')
    # Frames are read in order: the answer to audio sent after the close says the close
    # was read and the session goes on closing (it would wait for the flush otherwise).
    await ws.send_bytes(b"\x00" * 10)
    assert (await receive(ws))["code"] == "session_closing"
    held_engine.release.set()
    replies = [r async for r in _replies(ws)]
    assert [(r["status"], r.get("seq")) for r in replies] == [("transcript", 2), ("closed", None)]
    summary = await asyncio.wait_for(ending, 10)
    assert replies[-1] == summary and summary["reason"] == "ended_by_operator"
    assert ws.close_code == aiohttp.WSCloseCode.OK


async def test_a_close_that_cannot_finish_names_the_missing_chunks_and_the_client_exits_3(
    gateway: TestClient[Any, Any],
    held_engine: HeldEngine,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The transcriber never answers the close (its last final is held): the summary
    # says which chunks have no final and why, the audit log records it, and the
    # Python client says so and exits non-zero instead of 0.
    monkeypatch.setattr(gateway_module, "CLOSE_FLUSH_GRACE_S", 0.2)
    speech = tmp_path / "speech.wav"
    with wave.open(str(speech), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\x00" * 9600)  # 0.3 s: three chunks
    url = f"ws://127.0.0.1:{gateway.port}/ws"
    code = await asyncio.to_thread(client.main, [str(speech), "--url", url])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "incomplete: no final for chunks 1-3" in err and "no answer from transcriber-0" in err
    entries = [{k.decode(): v.decode() for k, v in f.items()}
               for _, f in await redis.xrange(keys.AUDIT)]  # fmt: skip
    incomplete = [e for e in entries if e["event"] == "session_incomplete"]
    assert len(incomplete) == 1 and incomplete[0]["missing_seqs"] == "1-3"


@pytest.mark.usefixtures("transcriber")
async def test_vosk_takes_8_khz_until_a_config_says_otherwise_and_answers_reset(
    gateway: TestClient[Any, Any], redis: Redis
) -> None:
    # vosk-server's defaults: 8,000 Hz without a config, a rate given as a float, and
    # {"reset": 1} answered with the result so far while the stream goes on.
    rates = []
    for config in (None, {"sample_rate": 44100.0}):
        ws = await gateway.ws_connect("/vosk")
        if config is not None:
            await ws.send_str(json.dumps({"config": config}))
        await ws.send_bytes(b"\x00" * 100)
        await receive(ws)
        await ws.send_str('{"reset" : 1}')
        reset = await receive(ws)
        assert set(reset) == {"result", "text"} and "size: 100 bytes" in reset["text"]
        await ws.send_bytes(b"\x00" * 200)
        await receive(ws)
        await ws.send_str('{"eof" : 1}')
        last = await receive(ws)
        assert "size: 100 bytes" not in last["text"]  # said once, at the reset
        await ws.close()
        sessions = await redis.keys(keys.session("*"))
        rates += [await redis.hget(s, "sample_rate") for s in sessions]
        for s in sessions:
            await redis.delete(s)
    assert rates == [b"8000", b"44100"]


@pytest.mark.usefixtures("transcriber")
async def test_the_client_at_a_speed_sends_at_the_pace_of_live_audio(
    gateway: TestClient[Any, Any],
) -> None:
    # --speed 2: ten 100 ms chunks over 0.45 s (chunk n leaves at 0.05 (n - 1) s),
    # as a live source would send them; without it, as fast as the acks come.
    url = f"ws://127.0.0.1:{gateway.port}/ws"
    chunks = [b"\x00" * 3200] * 10
    spans = []
    for speed in (2.0, None):
        acked: list[float] = []

        def on_reply(reply: dict[str, Any], acked: list[float] = acked) -> None:
            if reply["status"] == "received":
                acked.append(time.monotonic())

        summary = await client.Client(url, speed=speed).run(chunks, on_reply)
        assert summary["status"] == "closed" and len(acked) == 10
        spans.append(acked[-1] - acked[0])
    assert spans[0] >= 0.4 > spans[1], spans


@pytest.mark.usefixtures("transcriber")
async def test_the_client_resumes_after_unavailable_and_every_chunk_lands_once_in_place(
    gateway: TestClient[Any, Any], redis_url: str
) -> None:
    # Redis refuses audio mid-stream (the mailbox a string for a moment): the gateway
    # says `unavailable` and closes; the client resumes and sends again from the resume's
    # last_seq. Every chunk gets one final, of its own size, in order (before, the
    # client waited for ever, and a resend from its last ack misplaced chunks).
    url = f"ws://127.0.0.1:{gateway.port}/ws"
    mailbox = keys.mailbox("transcriber-0")
    replies: list[dict[str, Any]] = []
    # Blocking calls from the client's reply callback: the break and the repair happen
    # exactly between two replies, whatever the event loop runs next.
    direct = SyncRedis.from_url(redis_url)

    def on_reply(reply: dict[str, Any]) -> None:
        replies.append(reply)
        if reply["status"] == "received" and reply["seq"] == 10 and not direct.exists("aside"):
            direct.rename(mailbox, "aside")  # its entries kept, to come back
            direct.set(mailbox, "not a stream")
        if reply.get("code") == "unavailable":
            direct.delete(mailbox)
            direct.rename("aside", mailbox)

    chunks = [bytes([seq]) * (100 + seq) for seq in range(1, 31)]
    try:
        summary = await client.Client(url, window=5).run(chunks, on_reply)
    finally:
        direct.close()
    assert [r["seq"] for r in replies if r.get("code") == "unavailable"] == [11]
    assert [r["last_seq"] for r in replies if r["status"] == "resumed"] == [10]
    finals = [r for r in replies if r["status"] == "transcript" and r["final"]]
    assert [f["seq"] for f in finals] == list(range(1, 31))
    assert [int(f["text"].rsplit("size: ", 1)[1].split()[0]) for f in finals] == [
        100 + seq for seq in range(1, 31)
    ]
    assert summary["status"] == "closed" and summary["complete"] is True


@pytest.mark.usefixtures("transcriber")
async def test_client_errors_are_summarised_once_per_session_and_kind(
    gateway: TestClient[Any, Any], redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # 120,000 one-byte frames once pushed every entry of earlier sessions out of the
    # capped audit stream (an entry and an INFO line each). Now: counted, one line and
    # one audit entry per session and kind.
    earlier, _ = await open_session(gateway)
    await earlier.send_bytes(b"\x00" * 10)
    await receive(earlier)
    await earlier.close()
    ws, hello = await open_session(gateway)
    caplog.set_level(logging.INFO, logger="services.gateway")
    for frames, text in ((600, "{"), (300, '{"type": "nope"}')):
        for _ in range(frames):
            await ws.send_str(text)
        for _ in range(frames):
            assert (await receive(ws))["status"] == "error"
    await ws.send_str('{"type": "close"}')
    while (await receive(ws))["status"] != "closed":
        pass
    await ws.close()
    session = hello["session_id"]

    async def entries() -> list[dict[str, str]]:
        raw = await redis.xrange(keys.AUDIT)
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in raw]

    last = b"0"
    while True:  # until the close's entry is written (the session ends after the reply)
        reply = await redis.xread({keys.AUDIT: last}, block=5000)
        assert reply, "no session_close entry within 5 s"
        for entry_id, fields in reply[0][1]:
            last = entry_id
            if (
                fields.get(b"event") == b"session_close"
                and fields.get(b"session") == session.encode()
            ):
                break
        else:
            continue
        break
    errors = [e for e in await entries() if e["event"] == "client_error"]
    assert sorted((e["session"], e["code"], e["count"]) for e in errors) == [
        (session, "bad_json", "600"), (session, "unknown_message", "300"),
    ]  # fmt: skip
    assert [e["event"] for e in await entries()].count("session_open") == 2  # nothing evicted
    lines = [r.getMessage() for r in caplog.records if session in r.getMessage()]
    assert sum("bad_json" in line for line in lines) == 1
    assert sum("unknown_message" in line for line in lines) == 1


@pytest.mark.usefixtures("transcriber")
async def test_deeply_nested_json_gets_bad_json_and_the_session_goes_on(
    gateway: TestClient[Any, Any],
) -> None:
    # 100,000 `[` raised RecursionError: an ERROR with a traceback and a close 1000 with
    # no reply, which the client took for a normal end.
    ws, _ = await open_session(gateway)
    await ws.send_str("[" * 5_000)  # deeper than the parser's recursion goes
    reply = await receive(ws)
    assert (reply["status"], reply["code"]) == ("error", "bad_json")
    await ws.send_bytes(b"\x00" * 10)
    assert (await receive(ws))["status"] == "received"
    await ws.close()
    vosk = await gateway.ws_connect("/vosk")
    await vosk.send_str("[" * 5_000)  # vosk-server ignores what it cannot read
    await vosk.send_bytes(b"\x00" * 100)
    assert set(await receive(vosk)) & {"partial", "result", "text"}
    await vosk.close()
