"""Speech engine speed and accuracy on this machine.

    .venv/bin/python -m bench.engine_speed [--engine whisper|sphinx] [--partial-interval 1.0]

One session streams the recorded sentences of tests/data/speech, each followed by
1 s of silence, in 100 ms chunks, as a live client would. Prints one JSON line:
real-time factor (processing time / audio time; its inverse is how many real-time
streams one transcriber keeps up with), latency from the end of an utterance to
its final (the audio until the chunk that produced the final, plus that call's
processing time: what a real-time client waits on an idle machine), p50 and p95,
and the word error rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import wave
from pathlib import Path

from services.transcriber.engines import Result, drain
from services.transcriber.engines.model_store import default_cache_dir, packaged_model
from services.transcriber.engines.sphinx import SphinxEngine
from services.transcriber.engines.whisper import WhisperEngine
from tests import wer

SPEECH = Path(__file__).parent.parent / "tests" / "data" / "speech"
RATE = 16_000
CHUNK = RATE // 10 * 2  # bytes of 100 ms


def stream() -> tuple[bytes, list[str]]:
    """The sentences, each followed by 1 s of silence, as one 16 kHz s16 stream."""
    sentences = (SPEECH / "sentences.txt").read_text().splitlines()
    audio = b""
    for index in range(1, len(sentences) + 1):
        with wave.open(str(SPEECH / f"{index:02d}.wav")) as w:
            assert w.getframerate() == RATE
            audio += w.readframes(w.getnframes()) + b"\0" * (2 * RATE)
    return audio, sentences


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.engine_speed")
    parser.add_argument("--engine", choices=["whisper", "sphinx"], default="whisper")
    parser.add_argument("--partial-interval", type=float, default=1.0,
                        help="seconds of speech between partials; 0: none")  # fmt: skip
    args = parser.parse_args()
    interval = args.partial_interval or 1e6
    engine: WhisperEngine | SphinxEngine
    if args.engine == "sphinx":
        engine = SphinxEngine(partial_interval=interval)
    else:
        engine = WhisperEngine(str(packaged_model(default_cache_dir())), partial_interval=interval)
    audio, sentences = stream()
    session = engine.open_session("bench", "pcm_s16le", RATE)
    busy = 0.0
    latencies: list[float] = []
    finals: list[str] = []
    partials = 0
    for seq, start in enumerate(range(0, len(audio), CHUNK), start=1):
        began = time.perf_counter()
        results = session.feed(seq, audio[start : start + CHUNK], start / 2 / RATE)
        results += drain(session)
        job = session.partial_job()
        if job is not None:  # one at a time, as a transcriber with this session alone
            results += job.finish(job.run())
        took = time.perf_counter() - began
        busy += took
        chunk_end = (start + CHUNK) / 2 / RATE
        for r in results:
            if r.final:
                finals.append(r.text)
                latencies.append(chunk_end - (r.end or chunk_end) + took)
            else:
                partials += 1
    tail: list[Result] = session.flush() + drain(session)
    finals += [r.text for r in tail if r.final]
    reference = " ".join(sentences)
    errors = wer.errors(reference, " ".join(finals))
    seconds = len(audio) / 2 / RATE
    latencies.sort()
    print(json.dumps({
        "engine": args.engine, "partial_interval_s": args.partial_interval,
        "audio_s": round(seconds, 1), "real_time_factor": round(busy / seconds, 3),
        "streams_per_transcriber": round(seconds / busy, 1),
        "final_latency_p50_s": round(statistics.median(latencies), 3),
        "final_latency_p95_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        "finals": len(finals), "partials": partials,
        "wer": round(errors / len(wer.normalise(reference)), 4),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
