"""The transcriber's decode loop against a real Redis, with real speech and an engine
that records what it is asked to decode: batches across sessions, finals before the
answers to the flushes that follow them; the result due first decoded first."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from services.transcriber.actor import Transcriber, _Session
from services.transcriber.engines import DEFAULT_OPTIONS, Job, Options, Result
from services.transcriber.engines.utterances import UtteranceSession, open_session, vad_model
from shared import keys
from shared.config import Settings
from shared.messages import AudioChunk, Flushed, SessionControl, Transcript
from tests.integration.test_transcriber import Channel
from tests.speech import Recorder, spoken

pytestmark = pytest.mark.timeout(60)


class BatchingEngine:
    """Utterance sessions over a recorder; batches of up to four, recorded."""

    name = "batching"
    blocking = True
    batch_size = 4

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.vad = vad_model()
        self.batches: list[list[bool]] = []  # the `final` of each job, batch by batch

    def open_session(
        self, session_id: str, encoding: str, sample_rate: int, options: Options = DEFAULT_OPTIONS
    ) -> UtteranceSession:
        return open_session(self.recorder, self.vad, encoding, sample_rate, 0.6, options)

    def run_batch(self, jobs: Sequence[Job]) -> list[Any]:
        self.batches.append([job.final for job in jobs])
        return [self.recorder.transcribe(job.audio, job.final) for job in jobs]


async def test_sessions_sent_at_once_are_decoded_in_batches_and_each_close_follows_its_finals(
    redis: Redis, redis_url: str
) -> None:
    settings = Settings(redis_url=redis_url, heartbeat_interval=0.5)
    engine = BatchingEngine()
    client = Redis.from_url(redis_url)
    actor = Transcriber(settings, engine, client, "transcriber-0")  # type: ignore[arg-type]
    stop = asyncio.Event()
    speech = spoken([1, 2], pause_s=1.0)
    clients = [f"c{n}" for n in range(3)]
    task = None
    try:
        channels = [await Channel(redis, c).__aenter__() for c in clients]
        pipe = redis.pipeline(transaction=False)
        for n, client_id in enumerate(clients):  # three sessions' audio, all at once
            chunks = speech.chunks()
            for seq, data in enumerate(chunks, start=1):
                msg = AudioChunk(f"s{n}", client_id, seq, data, "pcm_s16le", speech.rate,
                                 0.0, (seq - 1) / 10)  # fmt: skip
                pipe.xadd(keys.mailbox("transcriber-0"), {"m": msg.encode()})
            close = SessionControl(f"s{n}", client_id, len(chunks), "close")
            pipe.xadd(keys.mailbox("transcriber-0"), {"m": close.encode()})
        await pipe.execute()
        # Started once all of it waits in the mailbox: "at once" for the transcriber too
        # (started first, its first read could wake on the first entry alone, and half
        # an utterance read is due a partial).
        task = asyncio.create_task(actor.run(stop))
        await asyncio.wait_for(actor.ready.wait(), 10)
        for channel in channels:
            got = []
            while not got or not isinstance(got[-1], Flushed):
                got.append(await channel.next())
            finals = [m for m in got if isinstance(m, Transcript) and m.final]
            assert len(finals) == 2 and got[-1].op == "close"  # type: ignore[union-attr]
            assert [m.seq for m in finals] == sorted(m.seq for m in finals)
            await channel.__aexit__()
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, 10)
        await client.aclose()
    assert any(len(batch) > 1 for batch in engine.batches), engine.batches
    assert all(all(batch) for batch in engine.batches), "a partial in a burst"
    # Nothing stays pending: every chunk is covered by a published final.
    assert (await redis.xpending(keys.mailbox("transcriber-0"), keys.GROUP))["pending"] == 0


class _Owing:
    """An engine session that owes a final or a partial since a given time (a partial
    whose interval is not up yet where `early`: a candidate only EARLY_PARTIAL_S ahead),
    handed out once; its job runs `run` and says "said"."""

    committed_seq = 0
    finals_done = 0

    def __init__(
        self,
        final: float | None = None,
        partial: float | None = None,
        early: bool = False,
        run: Any = lambda: None,
    ) -> None:
        self.final, self.partial, self.early, self.run = final, partial, early, run

    def final_since(self) -> float | None:
        return self.final

    def partial_since(self, early: float = 0.0) -> float | None:
        return None if self.early and not early else self.partial

    def final_job(self, hurry: bool = False) -> Job | None:
        since, self.final = self.final, None
        return None if since is None else Job(True, since, self.run, _said(True), hurried=hurry)

    def partial_job(self, early: float = 0.0) -> Job | None:
        since, self.partial = self.partial, None
        return None if since is None else Job(False, since, self.run, _said(False))


def _said(final: bool) -> Any:
    return lambda _: [Result(1, "said", final)]


@pytest.mark.parametrize(
    ("final_age", "partial_age", "early", "first"),
    [
        (0.0, 1.0, False, "partial"),  # due 1.0 s after the last: before the final's 0.3 s
        (0.0, 0.5, False, "final"),
        (0.5, 1.1, False, "final"),
        # Its interval not up yet, but due before the final: its deadline rules (it came
        # 1.52-1.71 s after the one before while only a full interval made a candidate).
        (0.0, 1.0, True, "partial"),
        (0.5, 1.0, True, "final"),
    ],
)
async def test_the_result_due_first_is_decoded_first_final_or_partial(
    redis_url: str, final_age: float, partial_age: float, early: bool, first: str
) -> None:
    # A final is wanted FINAL_SLACK_S after its cut, a partial PARTIAL_SLACK_S after the
    # last one (or its utterance's start): finals go first, but no longer starve a
    # partial that is about to miss its 1.5 s.
    client = Redis.from_url(redis_url)
    engine = BatchingEngine()
    actor = Transcriber(Settings(redis_url=redis_url), engine, client, "t-0")  # type: ignore[arg-type]
    now = time.monotonic()
    for sid, owing in (("f", _Owing(final=now - final_age)),
                       ("p", _Owing(partial=now - partial_age, early=early))):  # fmt: skip
        actor.sessions[sid] = actor._due[sid] = _Session(sid, sid, owing)  # type: ignore[arg-type]
    picked = actor._next_jobs(4)
    await client.aclose()
    assert len(picked) == 1  # one kind a pass
    assert picked[0][0].session_id == first[0]


@pytest.mark.parametrize(
    ("finals", "most", "hurried"), [(1, 1, False), (3, 1, True), (3, 4, False)]
)
async def test_finals_that_leave_others_waiting_are_hurried(
    redis_url: str, finals: int, most: int, hurried: bool
) -> None:
    # When sentences of several speakers end together, each final taken while another
    # waits is decoded the faster way (whisper: greedy), so the last is not late by a
    # beam search of each one before it. A batch that takes them all hurries none.
    client = Redis.from_url(redis_url)
    actor = Transcriber(Settings(redis_url=redis_url), BatchingEngine(), client, "t-0")  # type: ignore[arg-type]
    now = time.monotonic()
    owed = {f"f{n}": _Owing(final=now - n) for n in range(finals)}
    owed["p"] = _Owing(partial=now - 0.5)  # due after the finals; no final waits for it
    for sid, owing in owed.items():
        actor.sessions[sid] = actor._due[sid] = _Session(sid, sid, owing)  # type: ignore[arg-type]
    picked = actor._next_jobs(most)
    await client.aclose()
    assert len(picked) == min(finals, most) and all(job.final for _, job in picked)
    assert [job.hurried for _, job in picked] == [hurried] * len(picked)


async def test_a_transcribers_beat_says_what_share_of_its_finals_were_hurried(
    redis: Redis, redis_url: str
) -> None:
    # Ops see the engine trading accuracy for latency (status HURRIED, the metric
    # hark_transcriber_finals_hurried_ratio): three finals owed at once, one a pass,
    # the first two hurried.
    client = Redis.from_url(redis_url)
    engine = BatchingEngine()
    engine.batch_size = 1
    actor = Transcriber(Settings(redis_url=redis_url), engine, client, "t-0")  # type: ignore[arg-type]
    now = time.monotonic()
    for sid in ("a", "b", "c"):
        owing = _Owing(final=now - 1.0)
        actor.sessions[sid] = actor._due[sid] = _Session(sid, sid, owing)  # type: ignore[arg-type]
    async with Channel(redis, "a") as a, Channel(redis, "b") as b, Channel(redis, "c") as c:
        loop = asyncio.create_task(actor._decode_loop())
        try:
            for channel in (a, b, c):
                assert isinstance(await channel.next(), Transcript)
        finally:
            loop.cancel()
            await client.aclose()
    assert actor._hurried() == round(0.25 * 2 / 3, 3)  # smoothed as busy is, from 0
    assert actor._hurried() == round(0.75 * 0.25 * 2 / 3, 3)  # none decoded since


def _final_and_partial(
    client: Redis, redis_url: str, apart: bool, final: Any, partial: Any
) -> Transcriber:
    """A transcriber (one job a pass; partials `apart` or not) whose session "f" owes a
    final and "p" a partial, both overdue, the final's deadline first; their jobs run
    `final` and `partial`."""
    engine = BatchingEngine()
    engine.batch_size = 1
    engine.partials_apart = apart  # type: ignore[attr-defined]
    actor = Transcriber(Settings(redis_url=redis_url), engine, client, "t-0")  # type: ignore[arg-type]
    now = time.monotonic()
    owed = {"f": _Owing(final=now - 2.0, run=final), "p": _Owing(partial=now - 1.5, run=partial)}
    for sid, owing in owed.items():
        actor.sessions[sid] = actor._due[sid] = _Session(sid, sid, owing)  # type: ignore[arg-type]
    return actor


async def _both_said(said_final: Channel, said_partial: Channel) -> None:
    """The final of "f" and the partial of "p" (see _final_and_partial) are published."""
    for channel, final in ((said_final, True), (said_partial, False)):
        msg = await channel.next()
        assert isinstance(msg, Transcript) and (msg.text, msg.final) == ("said", final)


@pytest.mark.parametrize("apart", [True, False])
async def test_a_partial_overdue_while_a_final_decodes_is_decoded_beside_it(
    redis: Redis, redis_url: str, apart: bool
) -> None:
    # Behind a final (0.35-0.45 s on one core) a partial came up to 1.8 s after the one
    # before at 8 speakers. Where the engine decodes partials with a model of their own,
    # an overdue partial runs beside the final instead of after it.
    client = Redis.from_url(redis_url)
    partial_ran, final_ran = threading.Event(), threading.Event()
    beside: list[bool] = []  # whether the partial had run by the end of the final

    def final() -> None:  # ends once the partial has run, or at most 3 s later
        beside.append(partial_ran.wait(3.0))
        final_ran.set()

    actor = _final_and_partial(client, redis_url, apart, final, partial_ran.set)
    async with Channel(redis, "f") as said_final, Channel(redis, "p") as said_partial:
        loop = asyncio.create_task(actor._decode_loop())
        try:
            for ran in (partial_ran, final_ran):
                assert await asyncio.to_thread(ran.wait, 10)
            # Both published, each on its own write (one connection, one at a time).
            await _both_said(said_final, said_partial)
        finally:
            loop.cancel()
            await client.aclose()
    assert beside == [apart]


async def test_results_of_a_partial_beside_the_finals_take_turns_on_the_connection(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The partial beside and the final write their results on the decode loop's one
    # Redis connection. Two writes at once crashed a transcriber ("read() called while
    # another coroutine is already waiting for incoming data"). Here the first write
    # is held until the other result comes to be written too: it must wait its turn.
    client = Redis.from_url(redis_url)
    partial_ran = threading.Event()
    actor = _final_and_partial(client, redis_url, True, lambda: partial_ran.wait(3.0),
                               partial_ran.set)  # fmt: skip
    second = asyncio.Event()  # the second result came to be written
    writing, most, held = 0, 0, [False]

    class Turns(asyncio.Lock):
        async def acquire(self) -> bool:
            if self.locked():
                second.set()
            return await super().acquire()

    real = actor.results_wire.execute

    async def execute(*args: Any, **kw: Any) -> list[Any]:
        nonlocal writing, most
        writing += 1
        most = max(most, writing)
        try:
            if writing > 1:
                second.set()
            if not held[0]:
                held[0] = True
                await second.wait()
            return await real(*args, **kw)
        finally:
            writing -= 1

    monkeypatch.setattr(actor, "_results_lock", Turns())
    monkeypatch.setattr(actor.results_wire, "execute", execute)
    async with Channel(redis, "f") as said_final, Channel(redis, "p") as said_partial:
        loop = asyncio.create_task(actor._decode_loop())
        try:
            await asyncio.wait_for(second.wait(), 10)
            assert most == 1, "two writes at once on one connection"
            await _both_said(said_final, said_partial)
        finally:
            loop.cancel()
            await client.aclose()
    assert most == 1
