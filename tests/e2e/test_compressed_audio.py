"""Compressed and telephone audio with real speech through `hark up`'s tree (whisper):
what browsers record (WebM and Ogg Opus), MP3, FLAC, WAV and a format told by its first
bytes, sent in a burst and at real time, cut into frames anywhere as a recorder cuts
them; 8 kHz mu-law and A-law; a stream that cannot be decoded; a kill mid-stream."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

import aiohttp
import pytest

from tests.conftest import TreeFactory
from tests.e2e.test_real_speech import check_whole
from tests.speech import encode, g711, pieces, send, spoken

pytestmark = pytest.mark.timeout(300)

WHISPER = {"HARK_ENGINE": "whisper"}


async def test_browser_and_file_formats_in_a_burst_come_back_whole(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=1, env=WHISPER)
    speech = spoken([1, 3], pause_s=1.0)  # ends in speech: a decoder's held-back tail counts
    kinds = ["webm", "ogg", "mp3", "flac", "wav", "auto"]
    data = {k: encode(speech, "webm" if k == "auto" else k) for k in kinds}
    done = await asyncio.gather(*(
        send(tree.ws_url, speech, query=f"encoding={k}", frames=pieces(data[k], speech))
        for k in kinds
    ))  # fmt: skip
    for kind, (replies, _) in zip(kinds, done, strict=True):
        print(kind, f"{len(data[kind])} bytes")
        assert replies[0]["encoding"] == kind
        check_whole(replies, speech)
        acks = [r for r in replies if r["status"] == "received"]
        assert len(acks) == len(pieces(data[kind], speech))  # one per frame, as for PCM
        assert sum(a["size"] for a in acks) == len(data[kind])
    print(f"WebM/Opus at 32 kb/s: {len(data['webm']) / (len(speech.pcm) * 2):.2f} of the PCM")


async def test_telephone_audio_at_real_time_and_a_kill_of_the_transcriber_mid_stream(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=1, env=WHISPER)
    speech = spoken([3, 4, 5], pause_s=1.0, tail_s=0.5).at(8000)
    transcriber = await tree.actor("transcriber-0")
    killed = asyncio.Event()

    async def kill(index: int) -> None:
        if index == 40 and not killed.is_set():  # in the middle of the second sentence
            killed.set()
            os.kill(transcriber["pid"], signal.SIGKILL)

    (mulaw, _), (alaw, _), (ogg, _) = await asyncio.gather(
        send(tree.ws_url, speech, speed=4.0, query="encoding=mulaw",
             frames=pieces(g711(speech, "mulaw"), speech), on_chunk=kill),
        send(tree.ws_url, speech, speed=4.0, query="encoding=alaw",
             frames=pieces(g711(speech, "alaw"), speech)),
        send(tree.ws_url, speech, speed=4.0, query="encoding=ogg",
             frames=pieces(encode(speech, "ogg"), speech)),
    )  # fmt: skip
    assert killed.is_set()
    assert mulaw[0]["sample_rate"] == 8000  # G.711's own rate when none is given
    for replies in (mulaw, alaw, ogg):
        check_whole(replies, speech)
    row = await tree.actor("transcriber-0")
    assert row["restarts"] == 1, row


async def test_a_stream_that_cannot_be_decoded_gets_bad_audio_and_the_session_ends_cleanly(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=1, env=WHISPER)
    garbage = b"this is not a stream of audio at all " * 40

    async def stream(encoding: str, frames: int) -> list[dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(f"{tree.ws_url}?encoding={encoding}") as ws,
        ):
            assert (await ws.receive_json(timeout=30))["status"] == "ready"
            for _ in range(frames):
                await ws.send_bytes(garbage)
            await ws.send_str('{"type": "close"}')
            return [json.loads(m.data) async for m in ws]

    # WebM's demuxer gives up within a few frames: those from there get bad_audio (no
    # ack); Ogg's searches for its sync word until the close ends the stream: then.
    webm, ogg = await asyncio.gather(stream("webm", 30), stream("ogg", 3))
    for replies in (webm, ogg):
        errors = [r for r in replies if r["status"] == "error"]
        assert errors and {e["code"] for e in errors} == {"bad_audio"}, replies
        assert "could not be decoded" in errors[0]["error"]
        summary = replies[-1]
        assert summary["status"] == "closed" and summary["complete"] is True, summary
    acks = [r for r in webm if r["status"] == "received"]
    assert len(acks) < 30 and len(acks) + sum(r["status"] == "error" for r in webm) == 30
    assert sum(r["status"] == "error" for r in ogg) == 1
    # The gateway and the transcriber went on: a good stream after it is transcribed.
    speech = spoken([6], pause_s=0)
    replies, _ = await send(tree.ws_url, speech, query="encoding=webm",
                            frames=pieces(encode(speech, "webm"), speech))  # fmt: skip
    check_whole(replies, speech)
    for name in ("gateway", "transcriber-0"):
        assert (await tree.actor(name))["restarts"] == 0
