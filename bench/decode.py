"""What decoding compressed and telephone audio costs the gateway.

    .venv/bin/python -m bench.decode [--seconds 60]

A recording of the test sentences (1 s pauses), encoded as each `encoding` the
gateway takes, is decoded by the gateway's own decoder (services/gateway/decode.py)
in frames of 100 ms of audio, one frame at a time as a live stream arrives. Prints a
JSON line per encoding: the gateway's CPU seconds per second of audio (its decoding
thread included), the real-time streams one core could decode at that rate, the
bytes per second a client sends and their ratio to 16 kHz 16-bit PCM's (which the
gateway passes on without decoding), and the seconds of audio that came out (all of
it: nothing held back at the end is lost).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from services.gateway.decode import decoder_for
from tests.speech import Speech, encode, g711, pieces, spoken


async def measure(encoding: str, data: bytes, seconds: float, rate: int) -> dict[str, float]:
    frames = pieces(data, _speech(seconds))
    decoder = decoder_for(encoding, rate)
    assert decoder is not None
    cpu, wall = time.process_time(), time.perf_counter()
    out = 0
    for frame in frames:
        out += len(await decoder.decode(frame))
    out += len(await decoder.finish())
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    decoder.close()
    heard = out / 2 / decoder.rate
    return {"cpu_s_per_audio_s": round(cpu / seconds, 5), "streams_per_core": round(seconds / cpu),
            "bytes_per_s": round(len(data) / seconds), "decoded_s": round(heard, 2),
            "wall_s": round(wall, 3)}  # fmt: skip


_CACHE: dict[float, Speech] = {}


def _speech(seconds: float) -> Speech:
    """About `seconds` of the test sentences, 1 s apart."""
    if seconds not in _CACHE:
        indices = [i % 20 + 1 for i in range(max(1, round(seconds / 4.5)))]
        _CACHE[seconds] = spoken(indices, pause_s=1.0)
    return _CACHE[seconds]


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode")
    parser.add_argument("--seconds", type=float, default=60.0, help="audio per encoding")
    args = parser.parse_args()
    speech = _speech(args.seconds)
    seconds = speech.seconds
    pcm_bytes = len(speech.pcm) * 2 / seconds
    cases = {k: encode(speech, k) for k in ("webm", "ogg", "mp3", "flac", "wav")}
    low = speech.at(8000)
    for law in ("mulaw", "alaw"):
        cases[law] = g711(low, law)
    for encoding, data in cases.items():
        rate = 8000 if encoding in ("mulaw", "alaw") else 16000
        row = await measure(encoding, data, seconds, rate)
        row["bytes_vs_pcm_16k"] = round(row["bytes_per_s"] / pcm_bytes, 3)
        print(json.dumps({"encoding": encoding, "audio_s": round(seconds, 1), **row}))


if __name__ == "__main__":
    asyncio.run(main())
