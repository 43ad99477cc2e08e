"""Real speech through `hark up`: how long a close waits, and a restart's replay.

    .venv/bin/python -m bench.speech [--engine whisper|sphinx] [--seconds 60] [--kills 3]

Starts `hark up --engine whisper --transcribers 1` (embedded Redis, free loopback
ports) and streams the recorded sentences of tests/data/speech through it, printing
one JSON line per case:

- `burst`: a monologue of `--seconds` with no pause, sent at once and closed at once:
  seconds from the close to its summary, and the audio seconds decoded per second.
- `paced`: the sentences with 1 s pauses at `--speed` times real time, closed at once.
- `kills`: the sentences with 1 s pauses at 3x real time, the transcriber SIGKILLed
  `--kills` times in the middle of a sentence (each after its replacement is back):
  seconds from the kill to the replacement's `actor_start` (serving: its pending
  entries read again) and the entries it replayed.

Each case also says whether the close was complete, the finals, and the word error
rate against the sentences read.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from typing import Any

import numpy as np

from bench.load import Hark, arg_parser
from services.supervisor.commands import call_api
from shared.auth import read_admin_token
from tests import wer
from tests.speech import RATE, Speech, monologue, send, sentence, spoken

VICTIM = "transcriber-0"


def summary(case: str, speech: Speech, replies: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [r for r in replies if r.get("status") == "transcript" and r["final"]]
    said = " ".join(r["text"] for r in finals)
    seqs = [r["seq"] for r in finals]
    closed = replies[-1] if replies and replies[-1].get("status") == "closed" else {}
    return {
        "case": case, "audio_s": round(speech.seconds, 1),
        "complete": closed.get("complete"), "finals": len(finals),
        "finals_twice_or_out_of_order": seqs != sorted(set(seqs)),
        "partials": sum(1 for r in replies if r.get("status") == "transcript"
                        and not r["final"]),
        "wer": round(wer.errors(speech.text, said) / len(wer.normalise(speech.text)), 4),
    }  # fmt: skip


async def burst(hark: Hark, seconds: float) -> dict[str, Any]:
    speech = monologue(seconds)
    began = time.monotonic()
    replies, close_s = await send(hark.url, speech)
    total = time.monotonic() - began
    return {**summary("burst", speech, replies), "close_to_summary_s": round(close_s, 2),
            "audio_s_per_s": round(speech.seconds / total, 2)}  # fmt: skip


async def paced(hark: Hark, speed: float) -> dict[str, Any]:
    speech = spoken(list(range(1, 21)), pause_s=1.0)
    replies, close_s = await send(hark.url, speech, speed=speed)
    return {**summary(f"paced {speed:g}x", speech, replies),
            "close_to_summary_s": round(close_s, 2)}  # fmt: skip


async def kills(hark: Hark, count: int) -> dict[str, Any]:
    indices = list(range(1, 21))
    speech = spoken(indices, pause_s=1.0)
    # A chunk 1.2 s into every other sentence from the second on: mid-utterance.
    starts = np.cumsum([0] + [len(sentence(i)) + RATE for i in indices[:-1]])
    at = [int((starts[n] + 1.2 * RATE) / RATE * 10) for n in range(1, len(indices), 2)][:count]
    token = read_admin_token(hark.status_url)
    serving: list[float] = []
    replayed: list[int] = []
    back: asyncio.Task[None] | None = None

    async def replaced(after: str, killed: float) -> None:
        while True:
            page = await asyncio.to_thread(
                call_api, hark.status_url, "/audit", token=token, timeout=30,
                params={"after": after, "block_ms": "5000", "count": "100"},
            )  # fmt: skip
            after = page["last_id"]
            for e in page["entries"]:
                if e["event"] == "actor_start" and e["actor"] == VICTIM:
                    serving.append(round(time.monotonic() - killed, 3))
                    replayed.append(int(e.get("recovered", 0)))
                    return

    async def kill(index: int) -> None:
        nonlocal back
        if index not in at:
            return
        if back is not None:
            await back  # one replacement at a time: the next kill hits the new one
        actors = (await asyncio.to_thread(call_api, hark.status_url, "/status"))["actors"]
        pid = next(a["pid"] for a in actors if a["name"] == VICTIM)
        last = (await asyncio.to_thread(call_api, hark.status_url, "/audit", token=token,
                                        params={"count": "1"}))["last_id"]  # fmt: skip
        os.kill(pid, signal.SIGKILL)
        back = asyncio.create_task(replaced(last, time.monotonic()))

    replies, close_s = await send(hark.url, speech, speed=3.0, on_chunk=kill)
    if back is not None:
        await back
    return {**summary("kills", speech, replies), "close_to_summary_s": round(close_s, 2),
            "kills": len(serving), "kill_to_serving_s": serving,
            "entries_replayed": replayed}  # fmt: skip


def main() -> None:
    parser = arg_parser("bench.speech", __doc__)
    parser.add_argument("--engine", choices=["whisper", "sphinx"], default="whisper")
    parser.add_argument("--seconds", type=float, default=60.0, help="the burst's monologue")
    parser.add_argument("--speed", type=float, default=10.0, help="the paced case's pace")
    parser.add_argument("--kills", type=int, default=3)
    args = parser.parse_args()
    # Restarts as fast as they go: three kills in a few seconds are no crash loop here.
    hark = Hark(transcribers=1, engine=args.engine,
                env={"HARK_BACKOFF_MIN": "0.001", "HARK_BACKOFF_MAX": "0.001",
                     "HARK_RESTART_INTENSITY": "100"})  # fmt: skip
    try:
        for case in (burst(hark, args.seconds), paced(hark, args.speed), kills(hark, args.kills)):
            print(json.dumps({"engine": args.engine, **asyncio.run(case)}), flush=True)
    finally:
        hark.stop()


if __name__ == "__main__":
    main()
