"""Deepgram's live streaming protocol on `/v1/listen`, driven by Deepgram's own Python SDK
(`deepgram-sdk`, from PyPI) pointed at `hark up`: real speech through whisper at real-time
pace with interim results, VAD events and utterance ends; 8 kHz mu-law in a burst with a
Finalize mid-way and a transcriber killed; the handshake's refusals and a message hark
does not know."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from deepgram import AsyncDeepgramClient
from deepgram.core.api_error import ApiError
from deepgram.environment import DeepgramClientEnvironment

from tests import wer
from tests.conftest import TreeFactory
from tests.e2e.test_real_speech import BOUND
from tests.speech import Speech, g711, pace, pieces, sentence, spoken

pytestmark = pytest.mark.timeout(300)

WHISPER = {"HARK_ENGINE": "whisper"}
KEY = "dg-hark-test-0123456789"


def client(port: int, key: str = KEY) -> AsyncDeepgramClient:
    """Deepgram's async client with hark for its servers."""
    here = f"127.0.0.1:{port}"
    environment = DeepgramClientEnvironment(
        base=f"http://{here}",
        production=f"ws://{here}",
        agent=f"ws://{here}",
        agent_rest=f"http://{here}",
    )
    return AsyncDeepgramClient(api_key=key, environment=environment)  # fmt: skip


async def stream(
    port: int, frames: list[bytes], *, speed: float | None,
    during: Callable[[int, Any], Awaitable[None]] | None = None, **query: Any,
) -> list[Any]:  # fmt: skip
    """Every message of a stream of `frames` (100 ms each) sent with the SDK, then
    CloseStream; they end when hark closes the connection."""
    messages: list[Any] = []
    async with client(port).listen.v1.connect(model="nova-3", **query) as socket:

        async def read() -> None:
            async for message in socket:
                messages.append(message)

        reader = asyncio.create_task(read())
        began = asyncio.get_running_loop().time()
        for index, frame in enumerate(frames, start=1):
            await socket.send_media(frame)
            if during is not None:
                await during(index, socket)
            if speed is not None:
                await pace(began, index * 0.1 / speed)
        await socket.send_close_stream()
        await asyncio.wait_for(reader, 120)
    return messages


def of(messages: list[Any], kind: str) -> list[Any]:
    return [m for m in messages if getattr(m, "type", None) == kind]


def said(finals: list[Any]) -> str:
    return " ".join(f.channel.alternatives[0].transcript for f in finals)


def check_words(speech: Speech, text: str) -> None:
    rate = wer.errors(speech.text, text) / len(wer.normalise(speech.text))
    print(f"{speech.rate} Hz, {speech.seconds:.1f} s: WER {rate:.3f}: {text!r}")
    assert rate <= BOUND, text


async def test_a_live_stream_with_interim_results_vad_events_and_utterance_ends(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=1,
                            env={**WHISPER, "HARK_API_KEYS": f"dg:{KEY}"})  # fmt: skip
    speech = spoken([1, 3, 4], pause_s=1.0, tail_s=1.0)
    messages = await stream(
        tree.port, speech.chunks(), speed=1.0, encoding="linear16", sample_rate=16000,
        interim_results="true", vad_events="true", utterance_end_ms="1000", endpointing="300",
        punctuate="true", smart_format="true", language="en-US",
    )  # fmt: skip
    errors = of(messages, "Error")
    assert not errors, errors
    results = of(messages, "Results")
    finals = [r for r in results if r.is_final]
    interim = [r for r in results if not r.is_final]
    check_words(speech, said(finals))
    assert len(finals) == 3 and all(f.speech_final and not f.from_finalize for f in finals)
    assert len(interim) >= 3, "a partial while each sentence is spoken"
    for final in finals:
        alt = final.channel.alternatives[0]
        assert alt.words and all(w.punctuated_word and w.word == w.word.lower() for w in alt.words)
        assert (
            final.start <= alt.words[0].start
            and alt.words[-1].end <= final.start + final.duration + 0.05
        )
        assert 0 < alt.confidence <= 1
        assert final.metadata.request_id == of(messages, "Metadata")[0].request_id
    # Each sentence: SpeechStarted before its first result, UtteranceEnd after its final.
    kinds = [m.type if m.type != "Results" else ("final" if m.is_final else "interim")
             for m in messages]  # fmt: skip
    print(kinds)
    assert kinds.count("SpeechStarted") == 3 and kinds.count("UtteranceEnd") == 3
    assert [k for k in kinds if k != "interim"] == [
        "SpeechStarted",
        "final",
        "UtteranceEnd",
    ] * 3 + ["Metadata"]
    started = [m.timestamp for m in of(messages, "SpeechStarted")]
    assert all(abs(s - f.start) < 0.5 for s, f in zip(started, finals, strict=True)), started
    ends = [m.last_word_end for m in of(messages, "UtteranceEnd")]
    assert ends == [f.channel.alternatives[0].words[-1].end for f in finals]
    meta = of(messages, "Metadata")[0]
    assert abs(meta.duration - speech.seconds) < 0.01 and meta.channels == 1
    assert meta.sha256 == hashlib.sha256(b"".join(speech.chunks())).hexdigest()
    uuid.UUID(meta.request_id)


async def test_telephone_audio_in_a_burst_with_a_finalize_and_a_kill(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=1, env=WHISPER)
    speech = spoken([5, 6, 7], pause_s=1.0, tail_s=0.5).at(8000)
    frames = pieces(g711(speech, "mulaw"), speech)
    transcriber = await tree.actor("transcriber-0")
    # At the end of the second sentence, before a pause long enough to end it (a client
    # that knows its speaker is done: a button let go); the kill in the third.
    finalize_at = round((len(sentence(5)) + len(sentence(6))) / 16_000 * 10 + 10)
    kill_at = len(frames) - 20

    async def during(index: int, socket: Any) -> None:
        if index == finalize_at:
            await socket.send_finalize()
        if index == kill_at:
            os.kill(transcriber["pid"], signal.SIGKILL)

    messages = await stream(tree.port, frames, speed=None, during=during, encoding="mulaw",
                            sample_rate=8000, diarize="true")  # fmt: skip
    assert not of(messages, "Error")
    results = of(messages, "Results")
    assert all(r.is_final for r in results), "interim_results is off by default"
    check_words(speech, said(results))
    speakers = {w.speaker for r in results for w in r.channel.alternatives[0].words}
    assert speakers == {0}, speakers  # one voice: Deepgram numbers speakers from 0
    flags = [(r.speech_final, r.from_finalize) for r in results]
    assert flags == [(True, False), (False, True), (True, False)], flags
    assert of(messages, "Metadata") and messages[-1].type == "Metadata"
    assert (await tree.actor("transcriber-0"))["restarts"] == 1


async def test_the_handshake_refusals_and_messages_hark_does_not_know(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=1,
                            env={"HARK_API_KEYS": f"dg:{KEY}"})  # fmt: skip
    listen = client(tree.port, "wrong-key").listen.v1
    with pytest.raises(ApiError) as refused:
        async with listen.connect(model="nova-3", encoding="linear16", sample_rate=16000):
            pass
    assert refused.value.status_code == 401
    for query in (
        {"encoding": "amr-nb", "sample_rate": 8000}, {"channels": 2},
        {"sample_rate": 4000, "encoding": "linear16"}, {"endpointing": "soon"},
    ):  # fmt: skip
        with pytest.raises(ApiError) as bad:
            async with client(tree.port).listen.v1.connect(model="nova-3", **query):
                pass
        assert bad.value.status_code == 400, query
    # KeepAlive is taken quietly; a message of no known type gets Deepgram's SchemaError.
    async with client(tree.port).listen.v1.connect(model="nova-3", encoding="linear16",
                                                    sample_rate=16000) as socket:  # fmt: skip
        await socket.send_keep_alive()
        await socket._send({"type": "Transcribe faster"})
        error = await asyncio.wait_for(socket.recv(), 10)
        assert error.type == "Error" and error.variant == "SchemaError", error
        await socket.send_media(b"\0" * 3200)
        await socket.send_close_stream()
        rest = [await asyncio.wait_for(socket.recv(), 10)]
        while rest[-1].type != "Metadata":  # the mock engine's final first
            rest.append(await asyncio.wait_for(socket.recv(), 10))
        assert [m.type for m in rest[:-1]] == ["Results"] * (len(rest) - 1)
        assert rest[-1].duration == 0.1
