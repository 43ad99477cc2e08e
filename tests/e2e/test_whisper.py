"""The speech engines through the whole tree: partials while speaking, finals per
utterance with times and words, and the tail of the stream kept on close."""

from __future__ import annotations

import asyncio
import json
import wave
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import soxr

from services.supervisor.tree import free_port
from tests import wer
from tests.conftest import TreeFactory
from tests.speech import pace

pytestmark = pytest.mark.timeout(180)

SPEECH = Path(__file__).parent.parent / "data" / "two_sentences.wav"
FIRST = "the juice of lemons makes fine punch"
SECOND = "the boy was there when the sun rose"


# Word errors allowed per sentence: sphinx is the small, less accurate engine.
TOLERANCE = {"whisper": 1, "sphinx": 2}


@pytest.mark.parametrize("engine", ["whisper", "sphinx"])
async def test_engine_streams_partials_then_finals_and_close_keeps_the_tail(
    start_tree: TreeFactory, redis_url: str, engine: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=1, env={"HARK_ENGINE": engine})
    with wave.open(str(SPEECH)) as wav:
        rate, audio = wav.getframerate(), wav.readframes(wav.getnframes())
    step = rate // 10 * 2  # 100 ms frames
    replies: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{tree.ws_url}?sample_rate={rate}") as ws,
    ):
        assert (await ws.receive_json(timeout=30))["status"] == "ready"
        # At a live speaker's pace (partials are decoded only for audio nothing newer
        # has overtaken: a burst gets finals alone).
        began = asyncio.get_running_loop().time()
        for index, start in enumerate(range(0, len(audio), step)):
            await ws.send_bytes(audio[start : start + step])
            await pace(began, (index + 1) * 0.1)
        # The stream ends 0.3 s after the second sentence: too soon for the VAD to end
        # it, so only the close can bring its final.
        await ws.send_str('{"type": "close"}')
        async for msg in ws:
            replies.append(msg.json())
    transcripts = [r for r in replies if r["status"] == "transcript"]
    finals = [r for r in transcripts if r["final"]]
    for r in transcripts:
        kind = "final  " if r["final"] else "partial"
        span = f"{r.get('start', '')!s:>6}-{r.get('end', '')!s:<6}"
        print(f"{kind} seq {r['seq']:>2} {span} {r['text']}")
    assert len(finals) == 2, [r["text"] for r in transcripts]
    assert wer.errors(FIRST, finals[0]["text"]) <= TOLERANCE[engine], finals[0]["text"]
    assert wer.errors(SECOND, finals[1]["text"]) <= TOLERANCE[engine], finals[1]["text"]
    first_final = transcripts.index(finals[0])
    assert any(not r["final"] for r in transcripts[:first_final]), "no partial before the final"
    assert finals[0]["seq"] < finals[1]["seq"]
    assert 0.0 <= finals[0]["start"] < finals[0]["end"] < finals[1]["start"] < finals[1]["end"]
    assert finals[1]["end"] <= len(audio) / 2 / rate + 0.05
    assert [w["word"] for w in finals[0]["words"]] and all(
        finals[0]["start"] - 0.05 <= w["start"] <= w["end"] <= finals[0]["end"] + 0.5
        for w in finals[0]["words"]
    )  # fmt: skip
    assert replies[-1]["status"] == "closed" and replies[-1]["complete"] is True


async def test_an_unusable_whisper_model_stops_hark_up_at_start_saying_why(
    start_tree: TreeFactory, redis_url: str
) -> None:
    with pytest.raises(RuntimeError, match="exited early") as failed:
        env = {"HARK_ENGINE": "whisper", "HARK_WHISPER_MODEL": "./no/such/model"}
        await start_tree(redis_url=redis_url, transcribers=1, env=env)
    assert "model directory ./no/such/model does not exist" in str(failed.value)
    assert "transcriber-0 failed to start" in str(failed.value)


async def test_a_vosk_client_on_the_vosk_port_gets_the_sentences_from_8khz_audio(
    start_tree: TreeFactory, redis_url: str
) -> None:
    vosk_port = free_port()
    env = {"HARK_ENGINE": "whisper", "HARK_VOSK_PORT": str(vosk_port)}
    await start_tree(redis_url=redis_url, transcribers=1, env=env)
    with wave.open(str(SPEECH)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    audio = soxr.resample(pcm, 16000, 8000).astype("<i2").tobytes()  # telephone rate
    said: list[str] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"ws://127.0.0.1:{vosk_port}") as ws,
    ):
        await ws.send_str(json.dumps({"config": {"sample_rate": 8000}}))
        for start in range(0, len(audio), 8000):  # 0.5 s frames, as vosk's examples send
            await ws.send_bytes(audio[start : start + 8000])
            reply = await ws.receive_json(timeout=30)
            if reply.get("text"):
                said.append(reply["text"])
        await ws.send_str('{"eof" : 1}')
        final = await ws.receive_json(timeout=30)
        said.append(final["text"])
    text = " ".join(said)
    print(f"vosk client heard: {text!r}")
    assert wer.errors(f"{FIRST} {SECOND}", text) <= 2, text
