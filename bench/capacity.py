"""How many live speakers a tree carries: K sessions of real speech at real-time pace.

    .venv/bin/python -m bench.capacity --speakers 4 [--engine whisper|sphinx] [--naive]
    .venv/bin/python -m bench.capacity --sweep 1,2,4,6,8
    .venv/bin/python -m bench.capacity --speakers 16 --ramp 3
    .venv/bin/python -m bench.capacity --sweep 2,4,6 --query diarize=true

Each K starts `hark up` as shipped (its defaults: two transcribers, embedded Redis,
free loopback ports) and opens K sessions, each streaming the recorded sentences of
tests/data/speech with 1 s pauses (`--sentences` of them, each session starting at
another sentence, the starts spread over a second) in 100 ms chunks at real-time
pace, partials on. One JSON line per K: the word error rate; the latency from the end
of each sentence (its final's own `end`, in stream time) to the final's arrival,
p50/p95/max; the longest wait for a partial while a person speaks (from the sentence's
first loud sample in the recording, between partials, to its last), p50/p95/max over
the sentences (`partial_wait_from_cut_s`: the same from the utterance's start as hark
cut it, 0.2-0.3 s of audio before the speech, to its end, the measure of rounds
before 2026-12-04's seventh); the
CPU seconds of every process per second (a transcriber's with its decoder processes);
the sessions refused; each transcriber's
most sessions, highest busy share, highest share of finals hurried and last cost
(polled from the supervisor's /status each second: what admission went by); and
whether the
targets hold (WER <= 5 %, p50 <= 0.8 s, p95 <= 1.5 s, a partial at least every
1.5 s). `--naive` also runs each K the way hark decoded before
(HARK_WHISPER_DECODER=faster-whisper: 30 s windows, one utterance at a time, partials
from the main model) and
prints the ratios of the two in the same run. `--sweep` runs the K given and says, per
K, how many runs held the targets, and the largest K held in every run, as was each
smaller K of the sweep: `--runs N` runs each K N times (the runs of one K vary: at the
edge of a machine's capacity one may hold and the next not). `--ramp S` starts the
speakers S seconds apart instead, as people arrive, to see hark past its capacity:
the sessions it refuses (HTTP 503 with Retry-After) are counted, and the targets are
judged on those it took.
`--query` gives every session more settings (`diarize=true`: speakers labelled).

The host's speed is part of every figure: on a shared machine it moves within an hour
(a decode took 1.4-1.8 times as long at one hour as at the one before, nothing else
running here). So each line has `probe_s`, taken just before and just after the run
while hark idles: the median of three timings of one fixed job on one decoder thread,
whisper base as shipped (sentence 1 as a final, its first 1.5 s as a partial). Runs
compare where their probes agree; a run whose two probes differ much saw the host
change under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import aiohttp
import numpy as np
import psutil

from bench.load import Hark, _actors, arg_parser
from services.transcriber.engines.model_store import default_cache_dir, packaged_model
from services.transcriber.engines.whisper import WhisperEngine
from tests import wer
from tests.speech import RATE, Speech, pace, sentence, sentences, spoken

WER_BOUND, P50_BOUND, P95_BOUND, PARTIAL_BOUND = 0.05, 0.8, 1.5, 1.5


async def speaker(url: str, speech: Speech, delay: float, query: str = "") -> dict[str, Any]:
    """One live speaker: what came back, with arrival times (seconds after its audio
    began)."""
    await asyncio.sleep(delay)  # speakers do not start in step
    events: list[tuple[float, dict[str, Any]]] = []
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(f"{url}?sample_rate={speech.rate}"
                                       + (f"&{query}" if query else ""))  # fmt: skip
        except aiohttp.WSServerHandshakeError as exc:
            retry = exc.headers.get("Retry-After") if exc.headers else None
            return {"refused": exc.status, "retry_after": retry}
        async with ws:
            hello = await ws.receive_json(timeout=30)
            if hello["status"] != "ready":
                return {"refused": hello.get("code")}
            began = asyncio.get_running_loop().time()

            async def read() -> None:
                async for msg in ws:
                    reply = json.loads(msg.data)
                    events.append((asyncio.get_running_loop().time() - began, reply))
                    if reply["status"] == "closed":
                        return

            reader = asyncio.create_task(read())
            for index, chunk in enumerate(speech.chunks(), start=1):
                await ws.send_bytes(chunk)
                await pace(began, index * 0.1)
            await ws.send_str('{"type": "close"}')
            await asyncio.wait_for(reader, 120)
    return {"events": events}


def measure(
    speech: list[Speech], runs: list[dict[str, Any]], refusals_ok: bool = False
) -> dict[str, Any]:
    latencies: list[float] = []
    gaps: list[float] = []
    cut_gaps: list[float] = []
    errors = words = 0
    refused = unhinted = 0  # refusals, and those without a Retry-After
    for sp, run in zip(speech, runs, strict=True):
        if "refused" in run:
            refused += 1
            unhinted += run.get("retry_after") is None
            continue
        events = run["events"]
        finals = [(t, r) for t, r in events if r["status"] == "transcript" and r["final"]]
        partials = [t for t, r in events if r["status"] == "transcript" and not r["final"]]
        said = " ".join(r["text"] for _, r in finals)
        errors += wer.errors(sp.text, said)
        words += len(wer.normalise(sp.text))
        for arrived, final in finals:
            latencies.append(arrived - final["end"])
            # The earlier rounds' measure: from the utterance's start as hark cut it (its
            # 0.3 s of audio before the speech included) to its end.
            cut_gaps.append(_longest_wait(partials, final["start"], final["end"]))
        for onset, offset in sp.spans:  # while the person spoke
            gaps.append(_longest_wait(partials, onset, offset))
    rate = errors / words if words else None
    lat = _quantiles(latencies)
    gap = _quantiles(gaps)
    holds = (rate is not None and rate <= WER_BOUND and (refusals_ok or refused == 0)
             and lat["p50"] is not None
             and lat["p50"] <= P50_BOUND and lat["p95"] <= P95_BOUND
             and gap["max"] <= PARTIAL_BOUND)  # fmt: skip
    return {"wer": None if rate is None else round(rate, 4), "final_latency_s": lat,
            "partial_wait_s": gap, "partial_wait_from_cut_s": _quantiles(cut_gaps),
            "finals": len(latencies), "refused": refused,
            "refused_without_retry_after": unhinted,
            "targets_hold": holds}  # fmt: skip


def _longest_wait(partials: list[float], start: float, end: float) -> float:
    """The longest time from `start` to `end` with no partial arriving."""
    points = [start, *(t for t in partials if start < t < end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def _quantiles(xs: list[float]) -> dict[str, Any]:
    if not xs:
        return {"p50": None, "p95": None, "max": None}
    xs = sorted(xs)
    return {"p50": round(statistics.median(xs), 3),
            "p95": round(xs[min(len(xs) - 1, int(0.95 * len(xs)))], 3),
            "max": round(xs[-1], 3)}  # fmt: skip


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and of its live descendants (the sphinx engine decodes
    in a child process of its transcriber)."""
    top = psutil.Process(pid)
    total = 0.0
    for proc in [top, *top.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def run_k(
    k: int,
    engine: str,
    count: int,
    env: dict[str, str],
    transcribers: int = 2,
    ramp: float = 0.0,
    query: str = "",
) -> dict[str, Any]:
    hark = Hark(transcribers=transcribers, engine=engine, env=env)
    try:
        pids = _actors(hark.status_url)
        cpu0 = {n: _tree_cpu_s(p) for n, p in pids.items()}
        total = len(sentences())
        speech = [spoken([(k_ * 3 + i) % total + 1 for i in range(count)], pause_s=1.0)
                  for k_ in range(k)]  # fmt: skip
        began = time.monotonic()

        delays = [n * ramp if ramp else n / max(1, k) for n in range(k)]

        async def all_of() -> list[dict[str, Any]]:
            return await asyncio.gather(
                *(
                    speaker(hark.url, sp, delay, query)
                    for sp, delay in zip(speech, delays, strict=True)
                )
            )

        seen: dict[str, dict[str, float]] = {}
        polling = threading.Event()

        def poll() -> None:  # what admission went by: each transcriber's beat, each second
            while not polling.wait(1.0):
                try:
                    with urllib.request.urlopen(hark.status_url + "/status", timeout=2) as r:
                        actors = json.load(r)["actors"]
                except OSError:
                    continue
                for a in actors:
                    if a["name"].startswith("transcriber") and a.get("sessions") is not None:
                        mine = seen.setdefault(a["name"], {"sessions_max": 0, "busy_max": 0.0,
                                                           "hurried_max": 0.0})  # fmt: skip
                        mine["sessions_max"] = max(mine["sessions_max"], a["sessions"])
                        mine["busy_max"] = max(mine["busy_max"], a["busy"] or 0.0)
                        mine["hurried_max"] = max(mine["hurried_max"], a.get("hurried") or 0.0)
                        mine["cost_last"] = a.get("cost") or 0.0

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        runs = asyncio.run(all_of())
        polling.set()
        poller.join()
        wall = time.monotonic() - began
        cpu = {n: round((_tree_cpu_s(p) - cpu0[n]) / wall, 3) for n, p in pids.items()}
    finally:
        hark.stop()
    return {"speakers": k, "engine": engine, "transcribers": transcribers,
            "settings": {k_: v for k_, v in env.items() if k_ != "HARK_LOG_LEVEL"},
            **({"ramp_s": ramp} if ramp else {}), **({"query": query} if query else {}),
            **measure(speech, runs, refusals_ok=ramp > 0),
            "cpu_s_per_s": cpu, "transcribers_seen": dict(sorted(seen.items())),
            "audio_s": round(speech[0].seconds, 1)}  # fmt: skip


class Probe:
    """The host's speed now (see the module doc): seconds for one fixed job."""

    def __init__(self) -> None:
        self._engine = WhisperEngine(str(packaged_model(default_cache_dir())), threads=1)
        self._audio = (sentence(1) / 32768).astype(np.float32)
        self()  # the first decode of a model is slower than those after it

    def __call__(self) -> float:
        took = []
        for _ in range(3):
            began = time.perf_counter()
            self._engine.decode([self._audio], final=True)
            self._engine.decode([self._audio[: int(1.5 * RATE)]], final=False)
            took.append(time.perf_counter() - began)
        return round(statistics.median(took), 3)


def probed(probe: Callable[[], float], run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A run's line, with the probe taken before and after it."""
    before = probe()
    line = run()
    return {**line, "probe_s": {"before": before, "after": probe()}}


def largest_held(held: dict[int, int], runs: int) -> int | None:
    """The largest K of a sweep that held the targets in all its `runs`, as did every
    smaller K (`held`: how many runs of each K did). A K that held above one that
    failed is luck at the edge, not capacity."""
    best = None
    for k in sorted(held):
        if held[k] < runs:
            break
        best = k
    return best


def main() -> None:
    parser = arg_parser("bench.capacity", __doc__)
    parser.add_argument("--speakers", type=int, default=4)
    parser.add_argument("--sweep", help="speaker counts to run, comma-separated")
    parser.add_argument("--engine", choices=["whisper", "sphinx"], default="whisper")
    parser.add_argument("--sentences", type=int, default=16, help="per speaker (3-4 s each)")
    parser.add_argument("--transcribers", type=int, default=2, help="hark's default: 2")
    parser.add_argument("--set", action="append", default=[], metavar="HARK_X=V",
                        help="a setting for the tree (again for more)")  # fmt: skip
    parser.add_argument("--ramp", type=float, default=0.0, metavar="S",
                        help="start the speakers S seconds apart (0: within a second)")  # fmt: skip
    parser.add_argument("--query", default="", metavar="A=B&C=D",
                        help="more settings for every session, e.g. diarize=true")  # fmt: skip
    parser.add_argument("--naive", action="store_true",
                        help="also each K with faster-whisper's own decoding; ratios")  # fmt: skip
    parser.add_argument("--runs", type=int, default=1, metavar="N",
                        help="run each K N times: it holds only if every run held")  # fmt: skip
    args = parser.parse_args()
    ks = [int(k) for k in args.sweep.split(",")] if args.sweep else [args.speakers]
    held: dict[int, int] = dict.fromkeys(ks, 0)  # runs of each K that held the targets
    env = {"HARK_LOG_LEVEL": "WARNING", **dict(kv.split("=", 1) for kv in args.set)}
    probe = Probe()
    for k, run in itertools.product(ks, range(1, args.runs + 1)):
        one = functools.partial(run_k, k, args.engine, args.sentences, env, args.transcribers,
                                args.ramp, args.query)  # fmt: skip
        line = probed(probe, one)
        print(json.dumps({**line, **({"run": run} if args.runs > 1 else {})}), flush=True)
        held[k] += bool(line["targets_hold"])
        if args.naive and args.engine == "whisper" and run == 1:
            naive_env = {"HARK_LOG_LEVEL": "WARNING", "HARK_WHISPER_DECODER": "faster-whisper",
                         "HARK_WHISPER_THREADS": "2", "HARK_PARTIAL_MODEL": "main"}  # fmt: skip
            naive_run = functools.partial(run_k, k, args.engine, args.sentences, naive_env)
            naive = probed(probe, naive_run)
            print(json.dumps({**naive, "decoder": "faster-whisper"}), flush=True)
            ratio = {}
            for key in ("p50", "p95"):
                new, old = line["final_latency_s"][key], naive["final_latency_s"][key]
                if new and old:
                    ratio[f"final_latency_{key}_naive_over_batched"] = round(old / new, 2)
            new_cpu = sum(v for n, v in line["cpu_s_per_s"].items() if n.startswith("trans"))
            old_cpu = sum(v for n, v in naive["cpu_s_per_s"].items() if n.startswith("trans"))
            if new_cpu:
                ratio["transcriber_cpu_naive_over_batched"] = round(old_cpu / new_cpu, 2)
            print(json.dumps({"speakers": k, **ratio}), flush=True)
    if args.sweep:
        best = largest_held(held, args.runs)
        runs = {str(k): f"{n}/{args.runs}" for k, n in held.items()}
        print(json.dumps({"largest_k_within_targets": best, "runs_that_held": runs}), flush=True)


if __name__ == "__main__":
    main()
