"""Speaker labels (`diarize=true`): how right they are, and what they cost.

    .venv/bin/python -m bench.diarize [--rounds 2] [--speed 0]

Starts `hark up --engine whisper --transcribers 1` (embedded Redis, free loopback
ports) and streams the project's three-voice dialogue (tests/data/dialogue: 18 turns,
about a minute; turns 6 and 12 follow the one before with no pause) through it,
`--rounds` times without `diarize` and as many with, alternating (the first round
warms up), at `--speed` times
real time (0: all at once). One JSON line per session: whether it diarized, the word
error rate, the transcriber's CPU seconds per second of audio and its memory (RSS,
after the session), and for a diarized
one the labels, the share of words whose speaker is right (after the best mapping of
labels to voices) in turns after a pause and in turns without one, and the
diarization error rate. The last line: CPU per audio second with diarize over
without, measured in the same run; the first diarized session, which loads the
voice encoder, is left out of it and its load reported apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.load import Hark, _actors, _cpu_seconds, _rss_mb, arg_parser
from tests import diarization, wer
from tests.speech import dialogue, send

TOGETHER = (6, 12)


async def one(hark: Hark, diarize: bool, speed: float | None) -> dict[str, Any]:
    speech, turns = dialogue(together=TOGETHER)
    pid = _actors(hark.status_url)["transcriber-0"]
    cpu_before = sum(_cpu_seconds(pid))
    began = time.monotonic()
    replies, _ = await send(hark.url, speech, speed=speed,
                            query="diarize=true" if diarize else "")  # fmt: skip
    took = time.monotonic() - began
    cpu = sum(_cpu_seconds(pid)) - cpu_before
    finals = [r for r in replies if r.get("status") == "transcript" and r["final"]]
    said = " ".join(r["text"] for r in finals)
    out: dict[str, Any] = {
        "diarize": diarize, "audio_s": round(speech.seconds, 1), "finals": len(finals),
        "complete": replies[-1].get("complete"),
        "wer": round(wer.errors(speech.text, said) / len(wer.normalise(speech.text)), 4),
        "cpu_per_audio_s": round(cpu / speech.seconds, 4), "wall_s": round(took, 1),
        "transcriber_rss_mb": round(_rss_mb(pid)),
    }  # fmt: skip
    if diarize:
        joined = {n for t in TOGETHER for n in (t - 1, t)}
        paused = set(range(1, len(turns) + 1)) - joined
        accuracy, words = diarization.word_accuracy(turns, finals, paused)
        accuracy_joined, words_joined = diarization.word_accuracy(turns, finals, joined)
        out.update({
            "labels": sorted({f.get("speaker", "-") for f in finals}),
            "word_accuracy_after_pause": round(accuracy, 4), "words_after_pause": words,
            "word_accuracy_no_pause": round(accuracy_joined, 4), "words_no_pause": words_joined,
            "der": round(diarization.error_rate(turns, finals, speech.seconds), 4),
        })  # fmt: skip
    return out


def main() -> None:
    parser = arg_parser("bench.diarize", __doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--speed", type=float, default=0.0, help="0: a burst")
    args = parser.parse_args()
    speed = args.speed or None
    hark = Hark(transcribers=1, engine="whisper")
    try:
        rows = []
        for _ in range(args.rounds):
            for diarize in (False, True):
                row = asyncio.run(one(hark, diarize, speed))
                rows.append(row)
                print(json.dumps(row), flush=True)
        # The first round warms both up (the recogniser's first decodes, the encoder's
        # load): the ratio is of the rounds after it.
        plain = [r["cpu_per_audio_s"] for r in rows if not r["diarize"]]
        voiced = [r["cpu_per_audio_s"] for r in rows if r["diarize"]]
        warm_plain, warm_voiced = plain[1:] or plain, voiced[1:] or voiced
        ratio = (sum(warm_voiced) / len(warm_voiced)) / (sum(warm_plain) / len(warm_plain))
        load = (voiced[0] - warm_voiced[-1]) * rows[1]["audio_s"]
        print(json.dumps({"cpu_ratio_diarize_over_plain": round(ratio, 3),
                          "first_diarized_extra_cpu_s": round(load, 1)}), flush=True)  # fmt: skip
    finally:
        hark.stop()


if __name__ == "__main__":
    main()
