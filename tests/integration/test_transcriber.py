"""The transcriber actor against a real Redis, in this process."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from redis.asyncio import Redis

from services.transcriber.actor import Transcriber
from services.transcriber.engines import DEFAULT_OPTIONS, Immediate, Job, Options, Result
from services.transcriber.engines.mock import MockEngine
from shared import keys
from shared.config import MAX_BATCH_WAIT_S, Settings
from shared.messages import (
    ActorError,
    AudioChunk,
    Flushed,
    Heartbeat,
    Message,
    SessionControl,
    Transcript,
    decode,
    decode_as,
)
from shared.redis_util import Command

pytestmark = pytest.mark.timeout(30)

NAME = "transcriber-0"


def chunk(seq: int, session: str = "s1", client: str = "c1", size: int = 3200) -> bytes:
    return AudioChunk(session, client, seq, b"\x00" * size, "pcm_s16le", 16000, 0.0).encode()


class Channel:
    """Messages published on one `transcripts:<client_id>` channel, awaited one by one."""

    def __init__(self, redis: Redis, client_id: str) -> None:
        self.pubsub = redis.pubsub()
        self.channel = keys.transcripts(client_id)

    async def __aenter__(self) -> Channel:
        await self.pubsub.subscribe(self.channel)
        assert (await self.pubsub.get_message(timeout=5))["type"] == "subscribe"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()

    async def next(self) -> Message:
        msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=10)
        assert msg is not None, "nothing published within 10 s"
        return decode(msg["data"])


@pytest.fixture
async def actor(redis_url: str) -> AsyncIterator[Transcriber]:
    """A running transcriber; stopped (and its loop's errors raised) at the end."""
    settings = Settings(redis_url=redis_url, heartbeat_interval=0.2)
    client = Redis.from_url(redis_url)
    transcriber = Transcriber(settings, MockEngine(), client, NAME)
    stop = asyncio.Event()
    task = asyncio.create_task(transcriber.run(stop))
    yield transcriber
    stop.set()
    await asyncio.wait_for(task, 5)
    await client.aclose()


@dataclass
class Beat:
    lag_ms: int
    busy: float
    cost: float


def on_beats(actor: Transcriber, seen: Callable[[Beat], None]) -> None:
    """Call `seen` with what each of `actor`'s heartbeats says, as it is sent."""
    beat = actor.runtime.heartbeat

    def spy(
        state: str, load: int, lag_ms: int = 0, busy: float = 0.0, cost: float = 0.0,
        hurried: float = 0.0,
    ) -> list[Command]:  # fmt: skip
        seen(Beat(lag_ms, busy, cost))
        return beat(state, load, lag_ms, busy, cost, hurried)

    actor.runtime.heartbeat = spy  # type: ignore[method-assign]


async def pending(redis: Redis) -> int:
    info = await redis.xpending(keys.mailbox(NAME), keys.GROUP)
    return int(info["pending"])


async def test_chunk_becomes_a_published_stored_final_and_is_acked(
    redis: Redis, actor: Transcriber
) -> None:
    async with Channel(redis, "c1") as channel:
        await redis.xadd(keys.mailbox(NAME), {"m": chunk(1, size=1234)})
        result = await channel.next()
    assert isinstance(result, Transcript)
    assert (result.seq, result.final, result.actor) == (1, True, NAME)
    assert result.text.startswith("Transcribed: ") and result.text.endswith("(size: 1234 bytes)")
    stored = await redis.xrange(keys.results("s1"))
    assert [decode(fields[b"m"]) for _, fields in stored] == [result]
    assert await pending(redis) == 0
    assert await redis.xlen(keys.mailbox(NAME)) == 0, "committed audio stays in the mailbox"
    audit = [f for _, f in await redis.xrange(keys.AUDIT)]
    assert {b"event": b"transcript", b"session": b"s1"}.items() <= audit[-1].items()


async def test_control_close_is_answered_after_the_results_before_it(
    redis: Redis, actor: Transcriber
) -> None:
    async with Channel(redis, "c1") as channel:
        for seq in (1, 2):
            await redis.xadd(keys.mailbox(NAME), {"m": chunk(seq)})
        await redis.xadd(keys.mailbox(NAME), {"m": SessionControl("s1", "c1", 2, "close").encode()})
        got = [await channel.next() for _ in range(3)]
    assert [type(m).__name__ for m in got] == ["Transcript", "Transcript", "Flushed"]
    assert got[2] == Flushed("s1", "c1", 2, "close")


async def test_restarted_actor_replays_its_pending_entries_first(
    redis: Redis, redis_url: str
) -> None:
    # An incarnation that read three chunks and died before acking them.
    await redis.xgroup_create(keys.mailbox(NAME), keys.GROUP, id="0", mkstream=True)
    for seq in (1, 2, 3):
        await redis.xadd(keys.mailbox(NAME), {"m": chunk(seq)})
    await redis.xreadgroup(keys.GROUP, NAME, {keys.mailbox(NAME): ">"}, count=10)
    assert await pending(redis) == 3

    settings = Settings(redis_url=redis_url)
    client = Redis.from_url(redis_url)
    successor = Transcriber(settings, MockEngine(), client, NAME)
    async with Channel(redis, "c1") as channel:
        await successor.start()
        seqs = [(await channel.next()).seq for _ in range(3)]  # type: ignore[attr-defined]
    await client.aclose()
    assert successor.recovered == 3
    assert seqs == [1, 2, 3]
    assert await pending(redis) == 0


async def test_a_live_session_keeps_its_record_and_results_from_expiring(
    redis: Redis, actor: Transcriber
) -> None:
    await redis.hset(keys.session("s1"), "client_id", "c1")
    await redis.expire(keys.session("s1"), 5)  # about to expire
    async with Channel(redis, "c1") as channel:
        await redis.xadd(keys.mailbox(NAME), {"m": chunk(1)})
        await channel.next()
    ttl = actor.settings.results_ttl
    assert ttl - 5 < await redis.ttl(keys.session("s1")) <= ttl
    assert ttl - 5 < await redis.ttl(keys.results("s1")) <= ttl


async def test_actor_heartbeat_key_names_it_and_expires(redis: Redis, actor: Transcriber) -> None:
    async with Channel(redis, "c1") as channel:  # one round trip through the loop
        await redis.xadd(keys.mailbox(NAME), {"m": chunk(1)})
        await channel.next()
    assert await redis.sismember(keys.ACTORS, NAME)
    ttl = await redis.pttl(keys.actor(NAME))
    assert 0 < ttl <= 0.2 * 4 * 1000


async def test_heartbeat_reports_how_long_mailbox_entries_waited(
    redis: Redis, actor: Transcriber
) -> None:
    # What gateways refuse load on (HARK_MAX_LAG): the worst wait since the last beat.
    lags: list[int] = []
    lagging, caught_up = asyncio.Event(), asyncio.Event()

    def seen(beat: Beat) -> None:
        lags.append(beat.lag_ms)
        if beat.lag_ms:
            lagging.set()
        elif lagging.is_set():
            caught_up.set()

    on_beats(actor, seen)
    added_ms = int(time.time() * 1000) - 5000  # an entry that waited 5 s to be read
    await redis.xadd(keys.mailbox(NAME), {"m": chunk(1)}, id=f"{added_ms}-0")
    await asyncio.wait_for(lagging.wait(), 5)
    assert 5000 <= max(lags) < 10_000
    stored = decode_as(Heartbeat, await redis.get(keys.actor(NAME)))
    assert stored.role == "transcriber"
    await asyncio.wait_for(caught_up.wait(), 5)  # the next beats say 0 again


class _EveryOther(Immediate):
    """An engine session whose finals cover two chunks, as a real engine's cover an
    utterance: the first chunk of a session gets no final."""

    def __init__(self, fed: asyncio.Event) -> None:
        self.committed_seq = 0
        self.fed = fed  # set once a chunk got no final

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        if seq % 2:
            self.fed.set()
            return []
        self.committed_seq = seq
        return [Result(seq, f"chunks {seq - 1}-{seq}", True)]

    def flush(self) -> list[Result]:
        return []


class _EveryOtherEngine:
    name = "every-other"
    blocking = False

    def __init__(self) -> None:
        self.fed = asyncio.Event()

    def open_session(
        self, session_id: str, encoding: str, sample_rate: int, options: Options = DEFAULT_OPTIONS
    ) -> _EveryOther:
        return _EveryOther(self.fed)


async def test_results_created_after_the_session_began_expire_too(
    redis: Redis, redis_url: str
) -> None:
    # The session's keys are renewed a few times per TTL, not each round; the round of
    # its first final, which creates the results stream, must give that stream its TTL.
    settings = Settings(redis_url=redis_url, heartbeat_interval=0.2)
    client = Redis.from_url(redis_url)
    engine = _EveryOtherEngine()
    actor = Transcriber(settings, engine, client, NAME)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    try:
        async with Channel(redis, "c1") as channel:
            await redis.xadd(keys.mailbox(NAME), {"m": chunk(1)})
            await asyncio.wait_for(engine.fed.wait(), 5)  # a round of its own, no final
            await redis.xadd(keys.mailbox(NAME), {"m": chunk(2)})
            final = await channel.next()
        assert isinstance(final, Transcript) and final.seq == 2
        ttl = settings.results_ttl
        assert ttl - 5 < await redis.ttl(keys.results("s1")) <= ttl
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        await client.aclose()


async def test_after_a_short_batch_the_mailbox_fills_a_moment_before_the_next_read(
    redis: Redis, redis_url: str
) -> None:
    # HARK_BATCH_WAIT: chunks that come one by one while the actor waits are read
    # together (with HARK_BATCH_WAIT=0 each of these is a round of its own: checked).
    settings = Settings(redis_url=redis_url, batch_wait=MAX_BATCH_WAIT_S)
    client = Redis.from_url(redis_url)
    transcriber = Transcriber(settings, MockEngine(), client, NAME)
    batches: list[int] = []
    handle = transcriber._handle

    async def spy(entries: list[Any]) -> Any:
        if entries:
            batches.append(len(entries))
        return await handle(entries)

    transcriber._handle = spy  # type: ignore[method-assign]
    stop = asyncio.Event()
    task = asyncio.create_task(transcriber.run(stop))
    await transcriber.ready.wait()
    async with Channel(redis, "c1") as channel:
        for seq in range(1, 7):  # each awaited: a round trip apart
            await redis.xadd(keys.mailbox(NAME), {"m": chunk(seq)})
        got = [await channel.next() for _ in range(6)]
    stop.set()
    await asyncio.wait_for(task, 5)
    await client.aclose()
    assert [m.seq for m in got if isinstance(m, Transcript)] == [1, 2, 3, 4, 5, 6]
    assert sum(batches) == 6 and len(batches) <= 2, batches


async def test_a_rounds_results_leave_before_its_batch_wait_not_after(
    redis: Redis, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The wait after a short batch delays the next read only: here it lasts until the
    # test ends it, and the round's final is published and its chunk acked meanwhile.
    waiting, over = asyncio.Event(), asyncio.Event()
    sleep = asyncio.sleep

    async def batch_wait(delay: float, result: Any = None) -> Any:
        if delay != MAX_BATCH_WAIT_S:
            return await sleep(delay, result)
        waiting.set()
        await over.wait()
        return result

    monkeypatch.setattr(asyncio, "sleep", batch_wait)
    settings = Settings(redis_url=redis_url, batch_wait=MAX_BATCH_WAIT_S)
    client = Redis.from_url(redis_url)
    transcriber = Transcriber(settings, MockEngine(), client, NAME)
    stop = asyncio.Event()
    task = asyncio.create_task(transcriber.run(stop))
    try:
        await transcriber.ready.wait()
        async with Channel(redis, "c1") as channel:
            await redis.xadd(keys.mailbox(NAME), {"m": chunk(1)})
            final = await channel.next()
            assert waiting.is_set() and not over.is_set()
        assert isinstance(final, Transcript) and final.seq == 1
        while await pending(redis):
            pass  # the XACK went with it
        assert not over.is_set()
    finally:
        over.set()
        stop.set()
        await asyncio.wait_for(task, 5)
        await client.aclose()


class _Stuck(Immediate):
    """An engine session that owes one final, whose decode takes until `release`."""

    def __init__(self, release: threading.Event) -> None:
        self.committed_seq = 0
        self.release = release
        self.owed = time.monotonic()
        self.handed = False

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        return []

    def flush(self) -> list[Result]:
        return []

    def final_since(self) -> float | None:
        return None if self.handed else self.owed

    def final_job(self, hurry: bool = False) -> Job | None:
        self.handed = True
        return Job(True, self.owed, lambda: self.release.wait(10), lambda _: [])


class _StuckEngine:
    name = "stuck"
    blocking = True

    def __init__(self) -> None:
        self.release = threading.Event()

    def open_session(
        self, session_id: str, encoding: str, sample_rate: int, options: Options = DEFAULT_OPTIONS
    ) -> _Stuck:
        return _Stuck(self.release)


async def test_a_decode_longer_than_a_beat_counts_as_busy_while_it_runs(
    redis: Redis, redis_url: str
) -> None:
    # What admission judges a session's cost by: a decode that spans beats was counted
    # only when it ended (one beat capped at 100 %, the others 0 %), so an overloaded
    # engine of long decodes looked idle and took ever more sessions.
    settings = Settings(redis_url=redis_url, heartbeat_interval=0.2)
    engine = _StuckEngine()
    actor = Transcriber(settings, engine, Redis.from_url(redis_url), NAME)  # type: ignore[arg-type]
    shares: list[float] = []
    busy = asyncio.Event()

    def seen(beat: Beat) -> None:
        shares.append(beat.busy)
        if beat.busy >= 0.5:
            busy.set()

    on_beats(actor, seen)
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    try:
        await redis.xadd(keys.mailbox(NAME), {"m": chunk(1)})
        await asyncio.wait_for(busy.wait(), 5)  # while the one decode still runs
        assert not engine.release.is_set()
    finally:
        engine.release.set()
        stop.set()
        await task


class _Steady(Immediate):
    """An engine session whose every chunk owes a final that takes DECODE_S to decode."""

    DECODE_S = 0.2

    def __init__(self) -> None:
        self.committed_seq = 0
        self.owed: list[int] = []

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        self.owed.append(seq)
        return []

    def flush(self) -> list[Result]:
        return []

    def final_since(self) -> float | None:
        return time.monotonic() if self.owed else None

    def final_job(self, hurry: bool = False) -> Job | None:
        seq = self.owed.pop(0)

        def done(_: object) -> list[Result]:
            self.committed_seq = seq
            return []

        return Job(True, time.monotonic(), lambda: time.sleep(self.DECODE_S), done)


class _SteadyEngine:
    name = "steady"
    blocking = True

    def open_session(
        self, session_id: str, encoding: str, sample_rate: int, options: Options = DEFAULT_OPTIONS
    ) -> _Steady:
        return _Steady()


async def test_the_heartbeat_says_what_a_second_of_audio_costs_the_engine(
    redis: Redis, redis_url: str
) -> None:
    # What admission prices a new session at: decoding seconds per audio second, over
    # the last half minute in which the engine was not saturated. 0 until 5 s of audio
    # came; then about 0.1 here (0.2 s of decoding per 2 s chunk, one chunk a beat).
    settings = Settings(redis_url=redis_url, heartbeat_interval=1.0)
    actor = Transcriber(settings, _SteadyEngine(), Redis.from_url(redis_url), NAME)  # type: ignore[arg-type]
    costs: list[float] = []
    beaten = asyncio.Event()

    def seen(beat: Beat) -> None:
        costs.append(beat.cost)
        beaten.set()

    async def decoded(seq: int) -> None:
        """Until a beat after the final of chunk `seq` was decoded."""
        while True:
            beaten.clear()
            await beaten.wait()
            sess = actor.sessions.get("s1")
            if sess is not None and sess.engine.committed_seq >= seq:
                beaten.clear()
                await beaten.wait()
                return

    on_beats(actor, seen)
    stop = asyncio.Event()
    task = asyncio.create_task(actor.run(stop))
    try:
        await actor.ready.wait()
        two_seconds = 64000  # bytes of 16 kHz pcm_s16le
        for seq in (1, 2):
            await redis.xadd(keys.mailbox(NAME), {"m": chunk(seq, size=two_seconds)})
            await asyncio.wait_for(decoded(seq), 10)
        assert costs[-1] == 0, "a cost from 4 s of audio"
        await redis.xadd(keys.mailbox(NAME), {"m": chunk(3, size=two_seconds)})
        await asyncio.wait_for(decoded(3), 10)
        assert 0.08 <= costs[-1] <= 0.2, costs
    finally:
        stop.set()
        await task


async def test_the_mock_engine_refuses_nan_float_audio_as_the_real_ones_do(
    redis: Redis, actor: Transcriber
) -> None:
    nan = np.array([0.0, np.nan], dtype="<f4").tobytes()
    async with Channel(redis, "c1") as channel:
        bad = AudioChunk("s1", "c1", 1, nan, "pcm_f32le", 16000, 0.0).encode()
        await redis.xadd(keys.mailbox(NAME), {"m": bad})
        error = await channel.next()
        assert isinstance(error, ActorError) and "NaN" in error.error
        good = AudioChunk("s1", "c1", 2, np.zeros(2, "<f4").tobytes(), "pcm_f32le", 16000, 0.0)
        await redis.xadd(keys.mailbox(NAME), {"m": good.encode()})
        assert isinstance(await channel.next(), Transcript)
