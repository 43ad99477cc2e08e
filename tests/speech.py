"""Real speech for tests and benchmarks, made from the recorded sentences in
tests/data/speech: streams with or without pauses, at any sample rate, and the
reference text that goes with them."""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import soxr

SPEECH = Path(__file__).parent / "data" / "speech"
RATE = 16_000
# A sample louder than this starts or ends a sentence's speech (flite leaves some quiet
# at both ends of each recording).
QUIET = 300

Pcm = np.ndarray[Any, np.dtype[np.int16]]


class Recorder:
    """A recogniser that says how many samples it was given and records each call:
    what an utterance engine asks of its model, without a model."""

    def __init__(self, partial_interval: float = 1.0) -> None:
        self.partial_interval = partial_interval
        self.calls: list[tuple[bool, int]] = []  # (final, samples)

    def transcribe(self, audio: Any, final: bool) -> tuple[str, list[Any]]:
        self.calls.append((final, len(audio)))
        return f"{len(audio)} samples", []


@dataclass(frozen=True)
class Speech:
    """16-bit mono audio and the words spoken in it."""

    pcm: Pcm
    rate: int
    text: str

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.rate

    def at(self, rate: int) -> Speech:
        """The same speech resampled to `rate`."""
        if rate == self.rate:
            return self
        out = soxr.resample(self.pcm.astype(np.float32), self.rate, rate)
        return Speech(np.clip(out, -32768, 32767).astype(np.int16), rate, self.text)

    def chunks(self, ms: int = 100) -> list[bytes]:
        """The audio as little-endian bytes in `ms` pieces, as a live client sends it."""
        data = self.pcm.astype("<i2").tobytes()
        step = self.rate * ms // 1000 * 2
        return [data[i : i + step] for i in range(0, len(data), step)]


def sentences() -> list[str]:
    return (SPEECH / "sentences.txt").read_text().splitlines()


def sentence(index: int, trim: bool = False) -> Pcm:
    """Recording `index` (1-based), with the quiet at its ends cut off where `trim`."""
    with wave.open(str(SPEECH / f"{index:02d}.wav")) as wav:
        assert wav.getframerate() == RATE and wav.getsampwidth() == 2
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    if trim:
        loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > QUIET)
        pcm = pcm[max(0, loud[0] - 800) : loud[-1] + 800]  # 50 ms kept each side
    return pcm


def spoken(indices: list[int], pause_s: float, trim: bool = False, tail_s: float = 0.0) -> Speech:
    """The sentences `indices` in turn, `pause_s` of silence after each but the last,
    then `tail_s` of silence."""
    texts = sentences()
    parts: list[Pcm] = []
    for n, index in enumerate(indices):
        if n:
            parts.append(np.zeros(int(pause_s * RATE), dtype=np.int16))
        parts.append(sentence(index, trim))
    parts.append(np.zeros(int(tail_s * RATE), dtype=np.int16))
    return Speech(np.concatenate(parts), RATE, " ".join(texts[i - 1] for i in indices))


def monologue(seconds: float) -> Speech:
    """At least `seconds` of speech with no pause a voice activity detector would cut
    at: the sentences trimmed and joined 0.1 s apart, round again as needed."""
    indices: list[int] = []
    total = 0.0
    while total < seconds:
        index = len(indices) % len(sentences()) + 1
        indices.append(index)
        total += len(sentence(index, trim=True)) / RATE + 0.1
    return spoken(indices, pause_s=0.1, trim=True)


async def send(
    ws_url: str,
    speech: Speech,
    *,
    speed: float | None = None,
    finalize_at: int | None = None,
    on_chunk: Callable[[int], Awaitable[None]] | None = None,
    query: str = "",
) -> tuple[list[dict[str, Any]], float]:
    """Stream `speech` to a gateway's `/ws` in 100 ms chunks, `speed` times real time
    (None: all at once), with a finalize after chunk `finalize_at` and a close at the
    end; `on_chunk(n)` runs after chunk n is sent; `query`, more settings (`a=1&b=2`).
    Every reply (the greeting first), and the seconds from the close to the summary."""
    url = f"{ws_url}?sample_rate={speech.rate}" + (f"&{query}" if query else "")
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        replies: list[dict[str, Any]] = [await ws.receive_json(timeout=30)]
        assert replies[0]["status"] == "ready", replies[0]
        began = asyncio.get_running_loop().time()
        for index, chunk in enumerate(speech.chunks(), start=1):
            await ws.send_bytes(chunk)
            if index == finalize_at:
                await ws.send_str('{"type": "finalize"}')
            if on_chunk is not None:
                await on_chunk(index)
            if speed is not None:
                await pace(began, index * 0.1 / speed)
        await ws.send_str('{"type": "close"}')
        closed = time.monotonic()
        async for msg in ws:
            replies.append(json.loads(msg.data))
    return replies, time.monotonic() - closed


async def pace(began: float, at_s: float) -> None:
    """Hold a sender to a live speaker's pace: until `at_s` seconds after `began` (loop
    time). The clock of real-time audio, not a wait for something to happen."""
    delay = began + at_s - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)
