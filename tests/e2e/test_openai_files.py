"""`POST /v1/audio/transcriptions` as OpenAI's own Python package (`openai`, from PyPI)
uses it, pointed at `hark up` with `base_url`: every response format with real speech
and whisper, several requests at once, a ten-minute file cut into pieces spread over
the transcribers with one killed mid-file, and the errors a client meets (a file that
is not audio, one too large, a bad key, a bad setting) in OpenAI's shapes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from typing import Any

import numpy as np
import openai
import pytest

from tests import diarization, wer
from tests.conftest import TreeFactory
from tests.e2e.test_real_speech import BOUND
from tests.speech import Speech, dialogue, encode, sentences, spoken

pytestmark = pytest.mark.timeout(420)

WHISPER = {"HARK_ENGINE": "whisper"}
KEY = "sk-hark-test-0123456789"


def client(port: int, key: str = KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key,
                              max_retries=0, timeout=300)  # fmt: skip


def error_rate(speech: Speech, said: str) -> float:
    rate = wer.errors(speech.text, said) / len(wer.normalise(speech.text))
    print(f"{speech.seconds:.1f} s: WER {rate:.3f}: {said!r}")
    return rate


def cues(text: str) -> list[tuple[float, float, str]]:
    """SRT or WebVTT cues as (start, end, text)."""
    found = re.findall(r"(\d\d):(\d\d):(\d\d)[,.](\d{3}) --> (\d\d):(\d\d):(\d\d)[,.](\d{3})\n"
                       r"(.+)", text)  # fmt: skip
    out = []
    for *clock, said in found:
        h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, clock)
        out.append((h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000,
                    said))  # fmt: skip
    return out


async def test_every_response_format_through_openais_own_package(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=2, env=WHISPER)
    # (Sentence 2's "half past seven" is whisper base's "F-Pest 7" whatever the path.)
    speech = spoken([1, 3, 4], pause_s=1.0, tail_s=0.5)
    mp3 = encode(speech, "mp3")
    api = client(tree.port)

    async def ask(response_format: str, **more: Any) -> Any:
        return await api.audio.transcriptions.create(
            model="whisper-1", file=("speech.mp3", mp3), response_format=response_format, **more
        )

    # Five requests at once: ten sessions' worth of pieces on two transcribers.
    as_json, as_text, srt, vtt, verbose = await asyncio.gather(
        ask("json"), ask("text"), ask("srt"), ask("vtt"),
        ask("verbose_json", timestamp_granularities=["word", "segment"], language="en"),
    )  # fmt: skip
    assert error_rate(speech, as_json.text) <= BOUND
    assert isinstance(as_text, str) and as_text.strip() == as_json.text.strip()
    for captions, kind in ((srt, "srt"), (vtt, "vtt")):
        assert isinstance(captions, str)
        assert captions.startswith("WEBVTT") == (kind == "vtt")
        timed = cues(captions)
        assert len(timed) == 3, captions  # a cue a sentence: 1 s pauses end each
        assert " ".join(t for _, _, t in timed) == as_json.text.strip()
        assert all(a < b for a, b, _ in timed)
        assert all(timed[i][1] <= timed[i + 1][0] for i in range(len(timed) - 1))
        assert timed[-1][1] <= speech.seconds + 0.1
    assert verbose.language == "en" and verbose.task == "transcribe"
    assert abs(verbose.duration - speech.seconds) < 0.1
    assert error_rate(speech, verbose.text) <= BOUND
    segments, words = verbose.segments, verbose.words
    assert segments is not None and words is not None
    assert len(segments) == 3 and [s.id for s in segments] == [0, 1, 2]
    assert " ".join(s.text.strip() for s in segments) == verbose.text.strip()
    assert len(words) >= len(wer.normalise(speech.text)) - 3
    assert all(0 <= w.start <= w.end <= speech.seconds + 0.1 for w in words)
    assert [w.start for w in words] == sorted(w.start for w in words)
    # Each sentence's words lie in its segment.
    for segment in segments:
        inside = [w for w in words if segment.start - 0.05 <= w.start < segment.end + 0.05]
        assert inside, segment


async def test_a_ten_minute_file_is_spread_over_the_transcribers_and_survives_a_kill(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=2, env=WHISPER)
    rounds = []
    while sum(r.seconds for r in rounds) < 600:
        rounds.append(spoken(list(range(1, len(sentences()) + 1)), pause_s=1.0, tail_s=1.0))
    speech = Speech(
        np.concatenate([r.pcm for r in rounds]), 16_000,
        " ".join(r.text for r in rounds),
    )  # fmt: skip
    flac = encode(speech, "flac")
    print(f"{speech.seconds:.0f} s of speech, {len(flac) / 1e6:.1f} MB of FLAC")
    victim = await tree.actor("transcriber-0")

    async def kill_once_decoding() -> None:
        # At transcriber-0's first final: in the middle of a piece of the file.
        await tree.wait_audit(lambda e: e["event"] == "transcript" and
                              e["actor"] == "transcriber-0", within=120)  # fmt: skip
        os.kill(victim["pid"], signal.SIGKILL)

    began = time.monotonic()
    killer = asyncio.create_task(kill_once_decoding())
    answer = await client(tree.port).audio.transcriptions.create(
        model="whisper-1", file=("talk.flac", flac), response_format="verbose_json"
    )
    took = time.monotonic() - began
    assert killer.done()
    print(f"answered in {took:.0f} s ({speech.seconds / took:.1f}x real time)")
    assert error_rate(speech, answer.text) <= BOUND
    assert abs(answer.duration - speech.seconds) < 0.1
    segments = answer.segments or []
    starts = [s.start for s in segments]
    assert starts == sorted(starts) and segments[-1].end <= speech.seconds + 0.1
    # Ten pieces or so, on both transcribers; the killed one came back.
    opened = [e for e in await tree.audit() if e.get("event") == "session_open"]
    assert {e["transcriber"] for e in opened} == {"transcriber-0", "transcriber-1"}, opened
    assert len(opened) >= 9
    assert (await tree.actor("transcriber-0"))["restarts"] == 1


async def test_errors_come_in_openais_shapes(start_tree: TreeFactory, redis_url: str) -> None:
    env = {"HARK_API_KEYS": f"test:{KEY}", "HARK_MAX_FILE_BYTES": "200000"}
    tree = await start_tree(redis_url=redis_url, transcribers=1, env=env)
    api = client(tree.port)
    wav = encode(spoken([1], pause_s=0.0), "wav")  # 3 s: about 100 KB
    with pytest.raises(openai.BadRequestError) as bad:
        await api.audio.transcriptions.create(
            model="whisper-1", file=("notes.mp3", b"not audio at all " * 100)
        )
    assert bad.value.status_code == 400 and bad.value.code == "invalid_file_format"
    assert "Supported formats" in bad.value.message and bad.value.param == "file"
    with pytest.raises(openai.APIStatusError) as large:
        await api.audio.transcriptions.create(model="whisper-1", file=("big.wav", wav * 3))
    assert large.value.status_code == 413 and "200000" in large.value.message
    with pytest.raises(openai.AuthenticationError) as key:
        await client(tree.port, "sk-wrong").audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav)
        )
    assert key.value.status_code == 401
    with pytest.raises(openai.BadRequestError) as setting:
        await api.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav),
                                              language="english")  # fmt: skip
    assert setting.value.param == "language", setting.value.body
    with pytest.raises(openai.BadRequestError) as fmt:
        await api.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav), response_format="docx"
        )  # type: ignore[arg-type]
    assert fmt.value.param == "response_format"
    # And a good one still goes through (the mock engine: the plumbing, not the words).
    ok = await api.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav))
    assert ok.text


async def test_a_diarized_file_labels_each_word_with_its_speaker(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=2, env=WHISPER)
    speech, turns = dialogue()
    answer = await client(tree.port).audio.transcriptions.create(
        model="whisper-1", file=("meeting.flac", encode(speech, "flac")),
        response_format="verbose_json", timestamp_granularities=["word", "segment"],
        extra_body={"diarize": "true"},
    )  # fmt: skip
    assert error_rate(speech, answer.text) <= BOUND
    segments, words = answer.segments or [], answer.words or []
    labels = {s.model_extra["speaker"] for s in segments}
    assert labels == {"S1", "S2", "S3"}, labels
    finals = [{"speaker": w.model_extra["speaker"], "words": [{"start": w.start, "end": w.end,
               "speaker": w.model_extra["speaker"]}]} for w in words]  # fmt: skip
    accuracy, judged = diarization.word_accuracy(turns, finals)
    print(f"word speaker accuracy {accuracy:.3f} of {judged} words")
    assert accuracy >= 0.95
