"""Real speech for tests and benchmarks, made from the recorded sentences in
tests/data/speech: streams with or without pauses, at any sample rate, and the
reference text that goes with them."""

from __future__ import annotations

import asyncio
import io
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

from services.transcriber.engines import DEFAULT_OPTIONS, Decoded, Options

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

    def transcribe(
        self, audio: Any, final: bool, options: Options = DEFAULT_OPTIONS, hurry: bool = False
    ) -> Decoded:
        self.calls.append((final, len(audio)))
        return Decoded(f"{len(audio)} samples", [])


@dataclass(frozen=True)
class Speech:
    """16-bit mono audio and the words spoken in it."""

    pcm: Pcm
    rate: int
    text: str
    # Where each sentence's speech lies (seconds: its first and last sample louder than
    # QUIET), where the speech was made of sentences (`spoken`).
    spans: tuple[tuple[float, float], ...] = ()

    @property
    def seconds(self) -> float:
        return len(self.pcm) / self.rate

    def at(self, rate: int) -> Speech:
        """The same speech resampled to `rate`."""
        if rate == self.rate:
            return self
        out = soxr.resample(self.pcm.astype(np.float32), self.rate, rate)
        pcm = np.clip(out, -32768, 32767).astype(np.int16)
        return Speech(pcm, rate, self.text, self.spans)

    def chunks(self, ms: int = 100) -> list[bytes]:
        """The audio as little-endian bytes in `ms` pieces, as a live client sends it."""
        data = self.pcm.astype("<i2").tobytes()
        step = self.rate * ms // 1000 * 2
        return [data[i : i + step] for i in range(0, len(data), step)]


def silent_wav(seconds: float = 1.0) -> bytes:
    """`seconds` of 16 kHz silence as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(b"\0" * int(seconds * RATE) * 2)
    return out.getvalue()


def sentences() -> list[str]:
    return (SPEECH / "sentences.txt").read_text().splitlines()


def sentence(index: int, trim: bool = False) -> Pcm:
    """Recording `index` (1-based), with the quiet at its ends cut off where `trim`."""
    with wave.open(str(SPEECH / f"{index:02d}.wav")) as wav:
        assert wav.getframerate() == RATE and wav.getsampwidth() == 2
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    if trim:
        first, end = speech_span(pcm)
        pcm = pcm[max(0, first - 800) : end + 799]  # 50 ms kept each side
    return pcm


def speech_span(pcm: Pcm) -> tuple[int, int]:
    """Where a recording's speech lies: its first sample louder than QUIET, and the one
    after its last."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > QUIET)
    return int(loud[0]), int(loud[-1]) + 1


def spoken(indices: list[int], pause_s: float, trim: bool = False, tail_s: float = 0.0) -> Speech:
    """The sentences `indices` in turn, `pause_s` of silence after each but the last,
    then `tail_s` of silence."""
    texts = sentences()
    parts: list[Pcm] = []
    spans: list[tuple[float, float]] = []
    at = 0  # samples so far
    for n, index in enumerate(indices):
        if n:
            parts.append(np.zeros(int(pause_s * RATE), dtype=np.int16))
            at += len(parts[-1])
        parts.append(sentence(index, trim))
        first, end = speech_span(parts[-1])
        spans.append(((at + first) / RATE, (at + end) / RATE))
        at += len(parts[-1])
    parts.append(np.zeros(int(tail_s * RATE), dtype=np.int16))
    text = " ".join(texts[i - 1] for i in indices)
    return Speech(np.concatenate(parts), RATE, text, tuple(spans))


def clip(name: str, tail_s: float = 0.5) -> Speech:
    """A clip of tests/data/options (see its make.sh) and its words, `tail_s` of
    silence after it."""
    folder = SPEECH.parent / "options"
    texts = dict(line.split("\t") for line in (folder / "sentences.txt").read_text().splitlines())
    with wave.open(str(folder / f"{name}.wav")) as wav:
        assert wav.getframerate() == RATE and wav.getsampwidth() == 2
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
    tail = np.zeros(int(tail_s * RATE), dtype=np.int16)
    return Speech(np.concatenate([pcm, tail]), RATE, texts[name])


def joined(parts: list[Speech], pause_s: float) -> Speech:
    """Speeches at one rate in turn, `pause_s` of silence between them."""
    gap = np.zeros(int(pause_s * parts[0].rate), dtype=np.int16)
    pcm = np.concatenate([x for part in parts for x in (part.pcm, gap)][:-1])
    return Speech(pcm, parts[0].rate, " ".join(part.text for part in parts))


# container -> (codec, its sample format) for `encode`
CODECS = {"webm": ("libopus", "s16"), "ogg": ("libopus", "s16"), "mp3": ("libmp3lame", "s16p"),
          "flac": ("flac", "s16"), "wav": ("pcm_s16le", "s16")}  # fmt: skip


def encode(speech: Speech, container: str) -> bytes:
    """`speech` as a file of `container` (Opus at 32 kb/s in WebM and Ogg, as browsers
    record), made by FFmpeg through PyAV."""
    import av

    codec, sample_format = CODECS[container]
    rate = 48000 if codec == "libopus" else speech.rate
    pcm = speech.at(rate).pcm
    out = io.BytesIO()
    with av.open(out, mode="w", format=container) as file:
        stream: Any = file.add_stream(codec, rate=rate)
        stream.layout = "mono"
        if codec == "libopus":
            stream.bit_rate = 32000  # what browsers record speech at, about
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        if sample_format != "s16":
            frame = av.AudioResampler(format=sample_format, layout="mono",
                                      rate=rate).resample(frame)[0]  # fmt: skip
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            file.mux(packet)
    return out.getvalue()


def g711(speech: Speech, law: str) -> bytes:
    """`speech` (at its rate) as G.711 mu-law or A-law bytes, FFmpeg's encoder's."""
    import av

    codec: Any = av.CodecContext.create(f"pcm_{law}", "w")
    codec.sample_rate, codec.layout, codec.format = speech.rate, "mono", "s16"
    frame = av.AudioFrame.from_ndarray(speech.pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = speech.rate
    return b"".join(bytes(p) for p in [*codec.encode(frame), *codec.encode(None)])


def pieces(data: bytes, speech: Speech, ms: int = 100) -> list[bytes]:
    """An encoded stream of `speech` cut into as many frames as `ms` pieces of its audio,
    as a recorder hands them out (cut anywhere, not at the format's own frames)."""
    count = max(1, round(speech.seconds * 1000 / ms))
    step = -(-len(data) // count)
    return [data[i : i + step] for i in range(0, len(data), step)]


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
    frames: list[bytes] | None = None,
) -> tuple[list[dict[str, Any]], float]:
    """Stream `speech` to a gateway's `/ws` in 100 ms chunks, `speed` times real time
    (None: all at once), with a finalize after chunk `finalize_at` and a close at the
    end; `on_chunk(n)` runs after chunk n is sent; `query`, more settings (`a=1&b=2`);
    `frames`, what to send instead of the PCM chunks (the same speech encoded, in as
    many pieces).
    Every reply (the greeting first), and the seconds from the close to the summary."""
    url = f"{ws_url}?sample_rate={speech.rate}" + (f"&{query}" if query else "")
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        replies: list[dict[str, Any]] = [await ws.receive_json(timeout=30)]
        assert replies[0]["status"] == "ready", replies[0]
        began = asyncio.get_running_loop().time()
        for index, chunk in enumerate(frames or speech.chunks(), start=1):
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


@dataclass(frozen=True)
class Turn:
    """Who spoke when in a dialogue: seconds of the stream, the voice, the words."""

    start: float
    end: float
    speaker: str
    text: str


def dialogue(
    together: tuple[int, ...] = (),
    pause_s: float = 0.8,
    tail_s: float = 1.0,
    voices: tuple[str, ...] = (),
) -> tuple[Speech, list[Turn]]:
    """The dialogue of tests/data/dialogue (18 turns, three voices, 64 s):
    `pause_s` of silence between turns, none before the turns numbered in `together`
    (1-based: one speaker answers the other without a pause); only the turns of `voices`
    where given (numbered as kept). The speech and its truth."""
    folder = SPEECH.parent / "dialogue"
    lines = [line.split("\t") for line in (folder / "turns.txt").read_text().splitlines()]
    files = [folder / f"{n:02d}.wav" for n in range(1, len(lines) + 1)]
    kept = [(f, line) for f, line in zip(files, lines, strict=True)
            if not voices or line[0] in voices]  # fmt: skip
    parts: list[Pcm] = []
    turns: list[Turn] = []
    at = 0
    for number, (path, (voice, text)) in enumerate(kept, start=1):
        if number > 1 and number not in together:
            parts.append(np.zeros(int(pause_s * RATE), dtype=np.int16))
            at += int(pause_s * RATE)
        with wave.open(str(path)) as wav:
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.int16)
        parts.append(pcm)
        turns.append(Turn(at / RATE, (at + len(pcm)) / RATE, voice, text))
        at += len(pcm)
    parts.append(np.zeros(int(tail_s * RATE), dtype=np.int16))
    speech = Speech(np.concatenate(parts), RATE, " ".join(t.text for t in turns))
    return speech, turns
