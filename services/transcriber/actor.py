"""The transcriber actor: reads its mailbox, runs the engine, publishes results.

Two loops share the actor. The message loop reads the mailbox as fast as audio comes
and takes every chunk into its session at once (decoding, resampling and voice
activity are cheap); the decode loop spends the engine on what the sessions owe,
the result due first first (a final FINAL_SLACK_S after its cut, a partial of the
newest state of an utterance PARTIAL_SLACK_S after the last: finals go first unless
a partial is about to miss its cadence); where the engine decodes partials with a
model of their own, a partial whose deadline passes while finals decode is decoded
beside them, in a thread of its own. A final taken while other finals wait is
hurried (whisper: a greedy search instead of the beam) where its audio comes live.
A finalize or close is answered
(`Flushed`) once the finals owed before it are published, however long that takes.

Reliability rests on the consumer group: an entry stays pending until XACK, and
XACK happens only once the engine has covered the chunk with a final that is
already in `hark:results:{session}` (a control entry: once it is answered). A new
incarnation of the same actor (same name, same consumer) first re-reads its own
pending entries from id 0 and feeds them to fresh engine sessions, which rebuilds
the state the dead one had; it is serving again as soon as they are read, and
decodes the finals they owe, no partials of the replayed audio, as any others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from services.transcriber import speakers
from services.transcriber.engines import (
    BadInput,
    Decoded,
    Engine,
    EngineSession,
    Job,
    Options,
    Result,
)
from services.transcriber.speakers import Speakers
from shared import keys, logs
from shared.actor import ActorRuntime, notify_ready
from shared.audit import Audit
from shared.config import Settings
from shared.messages import (
    ActorError,
    AudioChunk,
    Flushed,
    Message,
    MessageError,
    SessionControl,
    SpeechEvent,
    Transcript,
    decode,
)
from shared.redis_util import Command, Entry, Wire, raw_stream_entries

log = logging.getLogger(__name__)

READ_COUNT = 256
REDIS_BACKOFF_MIN_S = 0.1
REDIS_BACKOFF_MAX_S = 2.0
# A session that has sent nothing for this long lost its gateway without an "end".
IDLE_SESSION_S = 600.0
# A partial is a candidate this much sooner than its interval: decoded then where the
# engine would idle otherwise (partials then come spread out instead of in step with
# the finals: at 8 speakers the wait for a partial's p95 1.6-1.7 s became 1.3-1.5 s),
# and by its deadline where it would not. Candidates only once the interval had passed,
# with the deadline 1.0 s, partials were overdue when they became candidates and came
# 1.52-1.71 s after the one before (bench/RESULTS.md, issue 22).
EARLY_PARTIAL_S = 0.3
# The order of work, earliest deadline first: a final should be out this long after
# it is owed (its cut: finals are wanted 0.8 s after the speech at the median, 0.6 s
# of which is the end silence), a partial this long after the last one (or the start
# of its utterance): one at least every 1.5 s, less what decoding it and the job under
# way take (1.2 with base's partials; 1.0 with tiny.en's, which cost half: the longest
# wait at 8 speakers 1.50-1.56 s instead of 1.61-1.64 s, finals as fast).
FINAL_SLACK_S = 0.3
PARTIAL_SLACK_S = 1.0
# The weight of the latest beat's share in the busy share a heartbeat reports (beats
# come every half interval: a few seconds of history).
BUSY_WEIGHT = 0.25
# What a second of a session's audio costs the engine (its `cost`) is averaged over
# about this long: long enough to hold sentences and pauses, bursts and silences.
COST_WINDOW_S = 30.0
# Below this much audio in the window the cost is not known yet (reported as 0).
COST_MIN_AUDIO_S = 5.0
# The cost is learnt only while the engine's busy share is under this: a
# saturated engine does less for each session (one partial where several were due), so
# what a second of audio costs it then understates what a session asks (measured:
# priced that way, 15 of 16 speakers arriving 3 s apart were let in, final p95 3.1 s).
COST_SATURATED = 0.75


@dataclass(slots=True)
class _Marker:
    """A control step waiting for the finals owed before it (`finals` cut by then)."""

    finals: int
    entry_id: bytes | None  # its mailbox entry (None: the idle sweep's own end)
    control: SessionControl


@dataclass
class _Session:
    session_id: str
    client_id: str
    engine: EngineSession
    received_at: float = 0.0
    # (seq, entry id) of chunks not yet covered by a final, oldest first
    pending: list[tuple[int, bytes]] = field(default_factory=list)
    last_seen: float = field(default_factory=time.monotonic)
    refreshed_at: float = float("-inf")  # when its keys' TTLs were last renewed
    has_results: bool = False  # a final of this incarnation created its results stream
    markers: deque[_Marker] = field(default_factory=deque)  # controls not yet answered
    writing: bool = False  # the decode loop's writes for it are on their way to Redis
    speakers: Speakers | None = None  # a diarized session's speakers (read at its open)


class Transcriber:
    """One transcriber actor: `Transcriber(settings, engine, redis, name)`, then `run(stop)`."""

    def __init__(self, settings: Settings, engine: Engine, redis: Redis, name: str) -> None:
        self.settings = settings
        self.engine = engine
        self.redis = redis
        self.name = name
        self.runtime = ActorRuntime(settings, redis, name, "transcriber")
        self.runtime.languages = list(getattr(engine, "languages", None) or ())
        self.audit = Audit(redis, name, settings.audit_maxlen)
        # The message loop's round trips (read, and the writes of the last round) go
        # out on a connection of their own, their replies parsed in bulk.
        self.wire = Wire(redis)
        # The decode loop's writes (finals, their acks, the answers to flushes) have a
        # connection of their own: they leave as each decode ends, not with the next read.
        self.results_wire = Wire(redis)
        # One write on it at a time: a partial decoded beside the finals (see
        # _partials_beside) may end while their results are on their way.
        self._results_lock = asyncio.Lock()
        self._work = asyncio.Event()  # set when a session may owe new work
        # The sessions that may owe work, so the decode loop looks at those alone: a
        # mock transcriber holds hundreds of sessions that never owe any.
        self._due: dict[str, _Session] = {}
        self._busy_s = 0.0  # the engine's decoding since the last beat
        self._busy_from = time.monotonic()
        self._counting_since: float | None = None  # since when a decode has been under way
        self._running = 0  # decodes under way (a partial may run beside finals)
        self._inflight: set[str] = set()  # the sessions whose jobs are being decoded
        self.busy = 0.0  # its share of the time, smoothed over beats
        # Decoding seconds and audio seconds, each decayed over COST_WINDOW_S: their
        # ratio is what a second of audio costs the engine (see _busy).
        self._cost_busy = self._cost_audio = 0.0
        self._audio_s = 0.0  # audio taken in since the last beat
        self._finals_n = self._hurried_n = 0  # finals decoded since the last beat; hurried
        self.hurried = 0.0  # the hurried ones' share, smoothed over beats
        self._broken = False  # a write of the decode loop failed: start over from Redis
        self.mailbox = keys.mailbox(name)
        self.sessions: dict[str, _Session] = {}
        self.recovered = 0
        self.lag_ms = 0  # the longest any entry read since the last heartbeat had waited
        self.ready = asyncio.Event()  # set once it has said it is running (tests wait on it)
        self._last_sweep = time.monotonic()

    async def start(self) -> None:
        """Create the mailbox and group if needed, register, and replay pending entries."""
        await self._ensure_group()
        await self.runtime.register()
        await self.runtime.beat("starting", 0)
        await self._recover()
        await self.runtime.beat("running", len(self.sessions))
        self.ready.set()
        await self.audit.log("actor_start", engine=self.engine.name, recovered=self.recovered)
        log.info("%s ready (engine %s, %d entries recovered)",
                 self.name, self.engine.name, self.recovered)  # fmt: skip

    async def _ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.mailbox, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def run(self, stop: asyncio.Event) -> None:
        """The message loop, until `stop` is set. Entries left pending wait for the next run.

        Redis going away does not end it: the actor waits with backoff, then starts
        over as a new incarnation would (group ensured, state rebuilt from its pending
        entries), so a Redis restart costs no crash and no restart budget.
        """
        decoder = asyncio.create_task(self._decode_loop(), name=f"{self.name}-decode")
        # The decode loop runs for ever: if it ends, an engine call failed, and the
        # actor ends with that error (its entries are read again by the next run).
        decoder.add_done_callback(lambda _: stop.set())
        try:
            await self._serve(stop)
        finally:
            decoder.cancel()
            await asyncio.wait([decoder])
            await self.results_wire.close()
        if not decoder.cancelled() and (failure := decoder.exception()) is not None:
            raise failure
        await self.wire.close()
        await self.runtime.clear()
        await self.audit.log("actor_stop")

    async def _serve(self, stop: asyncio.Event) -> None:
        """The message loop, until `stop` is set."""
        await self.start()
        notify_ready()
        block_ms = max(1, int(self.settings.heartbeat_interval * 500))
        backoff = REDIS_BACKOFF_MIN_S
        # The writes of one round (results, acks, heartbeat) travel in the same pipeline
        # as the read of the next, or ahead of it (a short batch, below): one round trip
        # per round. Redis runs them in order, so the results are published and the
        # entries acknowledged before the read blocks.
        pipe: list[Command] = []
        while not stop.is_set():
            try:
                if self._broken:
                    raise RedisError("a write of the decode loop failed")
                entries = await self._read(pipe, ">", block_ms)
                self.lag_ms = max(self.lag_ms, _lag_ms(entries))
                pipe = await self._handle(entries)
                if 0 < len(entries) < READ_COUNT and self.settings.batch_wait:
                    # A short batch: let the mailbox fill a moment, so the next round
                    # trip carries more (at 800 real-time streams a transcriber spent
                    # 31 µs a chunk without the wait, 23 with it: bench/RESULTS.md).
                    # The round's results leave first: the wait delays the next read,
                    # not them (their replies are read with the read's).
                    self.wire.send(pipe)
                    pipe = []
                    await asyncio.sleep(self.settings.batch_wait)
                backoff = REDIS_BACKOFF_MIN_S
            except (RedisError, OSError) as exc:
                pipe = []  # its writes come again
                log.warning("%s: Redis: %s; starting over in %.1f s", self.name, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, REDIS_BACKOFF_MAX_S)
                if not stop.is_set():
                    await self._start_over()
        with contextlib.suppress(RedisError, OSError):  # unacked entries wait for the next run
            if pipe or self.wire.owed:
                await self._execute(pipe)

    async def _start_over(self) -> None:
        """Rebuild from Redis after an outage: what is pending there is the truth."""
        self.sessions.clear()  # a decode under way for one of them is dropped at its end
        self._due.clear()
        self._broken = False
        try:
            await self.start()
        except (RedisError, OSError) as exc:
            log.warning("%s: Redis still unavailable: %s", self.name, exc)

    async def _recover(self) -> None:
        """Handle this consumer's pending entries again (a read from id 0 gives them),
        each batch's writes sent with the next read, as in the message loop."""
        last = b"0"
        pipe: list[Command] = []
        while entries := await self._read(pipe, last):
            last = entries[-1][0]
            entries = await self._drop_poison(entries)
            self.recovered += len(entries)
            pipe = await self._handle(entries)

    async def _read(
        self, pipe: list[Command], after: bytes | str, block_ms: int | None = None
    ) -> list[Entry]:
        """Send `pipe`'s writes and then a read of the mailbox past `after` (">": entries
        never delivered); the entries read."""
        block = () if block_ms is None else ("BLOCK", block_ms)
        pipe.append(("XREADGROUP", "GROUP", keys.GROUP, self.name, "COUNT", READ_COUNT, *block,
                     "STREAMS", self.mailbox, after))  # fmt: skip
        return _entries((await self._execute(pipe))[-1])

    async def _execute(self, pipe: list[Command]) -> list[Any]:
        """Run the commands of `pipe` on the wire; the first error reply raised."""
        return await self.wire.execute(pipe, raise_on_error=True)

    async def _drop_poison(self, entries: list[Entry]) -> list[Entry]:
        """Move the entries read more than HARK_MAX_DELIVERIES times (each incarnation
        reads its pending entries again: one that crashes or hangs the transcriber would
        do so forever) to the dead-letter stream; the others, to be handled."""
        pending = await self.redis.xpending_range(
            self.mailbox, keys.GROUP, min=entries[0][0], max=entries[-1][0],
            count=len(entries), consumername=self.name,
        )  # fmt: skip
        # redis-py types the reply loosely; with decode_responses off ids are bytes.
        times: dict[Any, int] = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        poison = [e for e in entries if times.get(e[0], 0) > self.settings.max_deliveries]
        if not poison:
            return entries
        pipe: list[Command] = []
        for entry_id, fields in poison:
            self._dead_letter(pipe, entry_id, fields, f"read {times[entry_id]} times, "
                              "never committed")  # fmt: skip
        pipe.append(("XACK", self.mailbox, keys.GROUP, *(entry_id for entry_id, _ in poison)))
        await self._execute(pipe)
        dropped = {entry_id for entry_id, _ in poison}
        return [e for e in entries if e[0] not in dropped]

    def _dead_letter(
        self, pipe: list[Command], entry_id: bytes, fields: dict[bytes, bytes] | None, why: str
    ) -> None:
        """Queue the move of a mailbox entry to the dead-letter stream, and its report."""
        log.warning("%s: mailbox entry %s to %s: %s", self.name, entry_id.decode(),
                    keys.DEAD_LETTER, why)  # fmt: skip
        pipe.append((
            "XADD", keys.DEAD_LETTER, "MAXLEN", "~", self.settings.audit_maxlen, "*",
            "mailbox", self.mailbox, "entry", entry_id, "reason", why,
            "payload", (fields or {}).get(b"m", b""),
        ))  # fmt: skip
        pipe.append(self.audit.command("dead_letter", entry=entry_id.decode(), reason=why))

    async def _handle(self, entries: list[Entry]) -> list[Command]:
        """Apply entries; the writes they call for, for the caller to send."""
        pipe: list[Command] = []
        acks: list[bytes] = []
        touched: dict[str, _Session] = {}
        for entry_id, fields in entries:
            payload = fields.get(b"m") if fields else None
            try:
                if payload is None:
                    raise MessageError("entry has no message")
                msg = decode(payload)
                with logs.session_context(getattr(msg, "session_id", None)):
                    await self._apply(pipe, entry_id, msg, acks, touched)
            except MessageError as exc:
                # Undecodable is for good: no second read would do better. The entry goes
                # to the dead-letter stream at once, never retried into a wedge.
                self._dead_letter(pipe, entry_id, fields, f"undecodable: {exc}")
                acks.append(entry_id)
        now = time.monotonic()
        for sess in touched.values():
            if not sess.writing:  # else the decode loop settles it once its writes land
                self._settle(pipe, acks, sess)
            self._mark_due(sess)
            # A live session stays resumable: its record and results live on while it
            # does. Refreshed a few times per TTL (and at its first final, see _publish),
            # not on every round.
            if now - sess.refreshed_at > self.settings.results_ttl / 10:
                sess.refreshed_at = now
                pipe.append(("EXPIRE", keys.results(sess.session_id), self.settings.results_ttl))
                pipe.append(("EXPIRE", keys.session(sess.session_id), self.settings.results_ttl))
                if sess.speakers is not None:  # who spoke lives as long as what was said
                    pipe.append(("EXPIRE", keys.speakers(sess.session_id),
                                 self.settings.results_ttl))  # fmt: skip
        self._commit(pipe, acks)
        if self.runtime.beat_due():
            busy, cost = self._busy()
            pipe += self.runtime.heartbeat("running", len(self.sessions), self._lag(), busy, cost,
                                           self._hurried())  # fmt: skip
        self._sweep(pipe)
        if self._due:
            self._work.set()
        return pipe

    def _settle(self, pipe: list[Command], acks: list[bytes], sess: _Session) -> None:
        """Commit what the session's finals cover, and answer the controls whose finals
        are all out: a flush with `Flushed`, an end by dropping the session."""
        engine = sess.engine
        committed = engine.committed_seq
        while sess.pending and sess.pending[0][0] <= committed:
            acks.append(sess.pending.pop(0)[1])
        while sess.markers and engine.finals_done >= sess.markers[0].finals:
            marker = sess.markers.popleft()
            if marker.entry_id is not None:
                acks.append(marker.entry_id)
            control = marker.control
            if control.op == "end":
                if self.sessions.get(sess.session_id) is sess:
                    del self.sessions[sess.session_id]
                # The client left: nothing of it is waited for any more.
                acks.extend(entry for _, entry in sess.pending)
                sess.pending.clear()
                sess.markers.clear()
                return
            flushed = Flushed(control.session_id, control.client_id, control.seq, control.op)
            pipe.append(("PUBLISH", keys.transcripts(control.client_id), flushed.encode()))

    async def _apply(
        self,
        pipe: list[Command],
        entry_id: bytes,
        msg: Message,
        acks: list[bytes],
        touched: dict[str, _Session],
    ) -> None:
        if isinstance(msg, AudioChunk):
            try:
                sess = self._session(msg)
                if msg.diarize and sess.speakers is None:  # what it knew, before a restart
                    stored = await self.redis.get(keys.speakers(msg.session_id))
                    sess.speakers = Speakers.decode(stored if isinstance(stored, bytes) else None)
                sess.received_at = msg.received_at
                sess.last_seen = time.monotonic()
                sess.pending.append((msg.seq, entry_id))
                touched[sess.session_id] = sess
                results = sess.engine.feed(msg.seq, msg.data, msg.start_s)
                self._audio_s += msg.seconds
            except BadInput as exc:  # tell the client; the chunk is done with
                error = ActorError(msg.session_id, msg.client_id, msg.seq, exc.code, str(exc))
                pipe.append(("PUBLISH", keys.transcripts(msg.client_id), error.encode()))
                acks.append(entry_id)
                return
            self._publish(pipe, sess, results)
        elif isinstance(msg, SessionControl):
            sess_or_none = self.sessions.get(msg.session_id)
            if sess_or_none is None:  # no audio of it here (or all of it done with)
                acks.append(entry_id)
                if msg.op != "end":
                    flushed = Flushed(msg.session_id, msg.client_id, msg.seq, msg.op).encode()
                    pipe.append(("PUBLISH", keys.transcripts(msg.client_id), flushed))
                return
            touched[msg.session_id] = sess_or_none
            if msg.data:  # the end of a compressed stream, decoded at its close
                try:
                    self._publish(pipe, sess_or_none, sess_or_none.engine.feed(msg.seq, msg.data,
                                                                               0.0))  # fmt: skip
                except BadInput:
                    log.info("%s: the tail of session %s's audio is not usable", self.name,
                             msg.session_id)  # fmt: skip
            self._flush(pipe, sess_or_none, entry_id, msg)
        else:
            raise MessageError(f"a transcriber mailbox does not take {msg.KIND!r}")

    def _busy(self) -> tuple[float, float]:
        """The engine's share of the time since the last beat (a decode under way counts
        up to now), smoothed over beats (BUSY_WEIGHT); and what a second of audio has
        cost it over the last COST_WINDOW_S of beats in which it was not saturated
        (decoding seconds per audio second, 0 while too little audio came to tell; see
        COST_SATURATED): a gateway prices a new session at that, since
        a session that has just come has cost nothing yet, and a busy share left by a
        burst or by sessions gone says nothing of what the next one will cost."""
        now = time.monotonic()
        if self._counting_since is not None:  # a decode spans the beat: split it here
            self._busy_s += now - self._counting_since
            self._counting_since = now
        elapsed = max(1e-3, now - self._busy_from)
        share = min(1.0, self._busy_s / elapsed)
        self.busy = _smoothed(self.busy, share)
        if self.busy < COST_SATURATED:  # smoothed: one long decode is no saturation
            keep = math.exp(-elapsed / COST_WINDOW_S)
            self._cost_busy = keep * self._cost_busy + self._busy_s
            self._cost_audio = keep * self._cost_audio + self._audio_s
        self._busy_s, self._audio_s, self._busy_from = 0.0, 0.0, now
        cost = self._cost_busy / self._cost_audio if self._cost_audio >= COST_MIN_AUDIO_S else 0.0
        return self.busy, round(cost, 4)

    def _hurried(self) -> float:
        """The share of the finals decoded since the last beat that were hurried (see
        _take), smoothed over beats as busy is (none decoded: none hurried)."""
        share = self._hurried_n / self._finals_n if self._finals_n else 0.0
        self._finals_n = self._hurried_n = 0
        self.hurried = _smoothed(self.hurried, share)
        return self.hurried

    def _lag(self) -> int:
        """The lag for a heartbeat: the worst since the last one, so no spike is missed,
        of a mailbox entry's wait to be read and of the oldest final's wait to be
        decoded (the engine falling behind: the audio is read at once either way)."""
        lag, self.lag_ms = self.lag_ms, 0
        owed = [t for s in self.sessions.values() if (t := s.engine.final_since()) is not None]
        if owed:
            lag = max(lag, int((time.monotonic() - min(owed)) * 1000))
        return lag

    def _commit(self, pipe: list[Command], entries: list[bytes]) -> None:
        """Acknowledge entries and delete them: a mailbox holds only uncommitted audio."""
        if entries:
            pipe.append(("XACK", self.mailbox, keys.GROUP, *entries))
            pipe.append(("XDEL", self.mailbox, *entries))

    async def _decode_loop(self) -> None:
        """Spend the engine on what the sessions owe (see the module doc), for ever."""
        batch_size = max(1, getattr(self.engine, "batch_size", 1))
        beside = bool(getattr(self.engine, "partials_apart", False))
        while True:
            picked = self._next_jobs(batch_size)
            if not picked:
                self._work.clear()
                await self._work.wait()
                continue
            decoding = asyncio.ensure_future(self._decode(picked))
            try:
                if beside and picked[0][1].final:
                    await self._partials_beside(decoding, batch_size)
                await decoding
            finally:
                decoding.cancel()  # only where the partials beside it failed

    async def _partials_beside(self, decoding: asyncio.Future[None], most: int) -> None:
        """While finals decode, decode beside them each partial that is overdue (its
        deadline passed: see PARTIAL_SLACK_S), where the engine takes partials from a
        model of their own (`partials_apart`): the partial need not wait for the finals
        (a final takes 0.35-0.45 s on one core; behind one, a partial came up to 1.8 s
        after the one before at 8 speakers on two cores)."""
        while not decoding.done():
            now = time.monotonic()
            partials = [d for d in self._candidates() if not d[1]]
            if picked := self._take([d for d in partials if d[0] <= now], most):
                log.debug("a partial decoded beside the finals")
                await self._decode(picked)
                continue
            due = [deadline for deadline, _, _ in partials]
            self._work.clear()  # the main loop looks for work itself once `decoding` ends
            woken: asyncio.Future[Any] = asyncio.ensure_future(self._work.wait())
            try:
                await asyncio.wait({decoding, woken}, return_when=asyncio.FIRST_COMPLETED,
                                   timeout=max(0.0, min(due) - now) if due else None)  # fmt: skip
            finally:
                woken.cancel()

    async def _decode(self, picked: list[tuple[_Session, Job]]) -> None:
        """Decode the jobs picked and publish their results."""
        jobs = [job for _, job in picked]
        sids = {sess.session_id for sess, _ in picked}
        self._inflight |= sids
        began = time.monotonic()
        try:  # a session is in flight until its results are written: in order
            outs = await self._run(jobs)
            decoded = [job for job in jobs if job.final and job.ready is None]
            hurried = sum(job.hurried for job in decoded)
            self._finals_n += len(decoded)
            self._hurried_n += hurried
            if log.isEnabledFor(logging.DEBUG):
                finals = [job.since for job in jobs if job.final]
                log.debug("decoded %d finals (%d hurried, the oldest owed %.2f s before) and "
                          "%d partials in %.2f s", len(finals), hurried,
                          began - min(finals, default=began), len(jobs) - len(finals),
                          time.monotonic() - began)  # fmt: skip
            for (sess, job), out in zip(picked, outs, strict=True):
                if self.sessions.get(sess.session_id) is not sess:
                    continue  # started over, or ended, meanwhile: its audio is read again
                with logs.session_context(sess.session_id):
                    results = job.finish(out)
                    self._mark_due(sess)
                    await self._finish(sess, results)
        finally:
            self._inflight -= sids

    async def _run(self, jobs: list[Job]) -> list[Any]:
        """The jobs' outputs: in one batch where the engine takes batches; a blocking
        engine's in a thread. Their time counts as busy, early partials' too: each would
        have been due a moment later (not counting them, a session's cost read a third
        of what it was: 16 speakers arriving 3 s apart were all let in)."""
        run_batch = getattr(self.engine, "run_batch", None)
        todo = [job for job in jobs if job.ready is None]  # the others were decoded ahead

        def run() -> list[Any]:
            if run_batch is not None and len(todo) > 1:
                done = iter(run_batch(todo))
                outs = [job.ready if job.ready is not None else next(done) for job in jobs]
            else:
                outs = [job.run() for job in jobs]
            return [_voiced(job, out) for job, out in zip(jobs, outs, strict=True)]

        if self._running == 0:  # busy is the time any decode is under way
            self._counting_since = time.monotonic()
        self._running += 1
        try:
            return await asyncio.to_thread(run) if self.engine.blocking else run()
        finally:
            self._running -= 1
            if self._running == 0 and self._counting_since is not None:
                self._busy_s += time.monotonic() - self._counting_since
                self._counting_since = None

    def _next_jobs(self, most: int) -> list[tuple[_Session, Job]]:
        """Up to `most` jobs of different sessions and of one kind (final or partial):
        the job whose result is due first (earliest deadline: see FINAL_SLACK_S), and
        the others of its kind by their deadlines; none for a session whose flush is on
        its way (its final makes a partial worthless) or whose job is being decoded. A
        partial is a candidate EARLY_PARTIAL_S before its interval is up, so it is taken
        by its deadline, not only once its interval has passed (see EARLY_PARTIAL_S)."""
        return self._take(self._candidates(), most)

    def _take(
        self, due: list[tuple[float, bool, _Session]], most: int
    ) -> list[tuple[_Session, Job]]:
        """The jobs of up to `most` of the candidates `due` (see _candidates): the one
        due first, and others of its kind by their deadlines. Finals that leave others
        waiting behind them are hurried (see EngineSession.final_job): when sentences of
        several speakers end together, the last of them is not late by a beam search of
        each one before it (at 8 speakers on two cores the finals' p95 was 1.01-1.13 s
        instead of 1.10-1.70 s). Their sessions take the hurry only where the audio
        comes at a live speaker's pace (see utterances.LIVE_LEAD_S)."""
        picked: list[tuple[_Session, Job]] = []
        due.sort(key=lambda d: d[0])
        hurry = sum(final for _, final, _ in due) > most
        for _, final, sess in due:
            if final is due[0][1] and len(picked) < most:
                engine = sess.engine
                job = engine.final_job(hurry) if final else engine.partial_job(EARLY_PARTIAL_S)
                if job is not None:
                    picked.append((sess, job))
        return picked

    def _candidates(self) -> list[tuple[float, bool, _Session]]:
        """(deadline, final, session) of the sessions that owe a job now and are not
        being decoded."""
        due: list[tuple[float, bool, _Session]] = []
        for sess in self._owing():
            engine = sess.engine
            if sess.session_id in self._inflight:
                continue
            if (since := engine.final_since()) is not None:
                due.append((since + FINAL_SLACK_S, True, sess))
            elif not sess.markers and (since := engine.partial_since(EARLY_PARTIAL_S)) is not None:
                due.append((since + PARTIAL_SLACK_S, False, sess))
        return due

    def _owing(self) -> list[_Session]:
        """The sessions that may owe work; those that owe none (or have ended, or
        started over) are forgotten until their next audio."""
        owing = []
        for sid, sess in list(self._due.items()):
            if _owes(sess) and self.sessions.get(sid) is sess:
                owing.append(sess)
            else:
                del self._due[sid]
        return owing

    async def _finish(self, sess: _Session, results: list[Result]) -> None:
        """Publish a decode's results and settle the session, on the decode loop's own
        connection; again while settling finds more (controls read during the write)."""
        while True:
            pipe: list[Command] = []
            acks: list[bytes] = []
            self._publish(pipe, sess, results)
            results = []
            self._settle(pipe, acks, sess)
            self._commit(pipe, acks)
            if not pipe:
                return
            sess.writing = True
            try:
                async with self._results_lock:
                    await self.results_wire.execute(pipe, raise_on_error=True)
            except (RedisError, OSError) as exc:
                # The results are not stored: the message loop starts over from what
                # Redis holds (their audio is still pending), which decodes them again.
                log.warning("%s: Redis: %s; the decode's writes are lost", self.name, exc)
                self._broken = True
                return
            finally:
                sess.writing = False

    def _session(self, chunk: AudioChunk) -> _Session:
        """The session of `chunk`, opened with its format at its first chunk."""
        sess = self.sessions.get(chunk.session_id)
        if sess is None:
            options = Options(chunk.end_silence or None, chunk.language or None, chunk.prompt,
                              chunk.hotwords, chunk.diarize)  # fmt: skip
            if chunk.diarize:
                speakers.require()
                speakers.preload()
            engine_session = self.engine.open_session(
                chunk.session_id, chunk.encoding, chunk.sample_rate, options
            )
            sess = _Session(chunk.session_id, chunk.client_id, engine_session)
            self.sessions[chunk.session_id] = sess
        return sess

    def _publish(self, pipe: list[Command], sess: _Session, results: list[Result]) -> None:
        for result in results:
            if result.event:  # a hint for the client: published, not stored
                at = result.start if result.start is not None else result.end
                event = SpeechEvent(sess.session_id, sess.client_id, result.seq, result.event,
                                    at or 0.0)  # fmt: skip
                pipe.append(("PUBLISH", keys.transcripts(sess.client_id), event.encode()))
                continue
            speaker: str | None = None
            word_speakers: list[str] = []
            if result.final and sess.speakers is not None:
                speaker, word_speakers = _who(sess.speakers, result)
                pipe.append(("SET", keys.speakers(sess.session_id), sess.speakers.encode(),
                             "EX", self.settings.results_ttl))  # fmt: skip
            payload = Transcript(
                session_id=sess.session_id, client_id=sess.client_id, seq=result.seq,
                text=result.text, final=result.final, actor=self.name,
                received_at=sess.received_at, start=result.start, end=result.end,
                words=[list(w) for w in result.words], language=result.language,
                speaker=speaker, speakers=word_speakers,
            ).encode()  # fmt: skip
            if result.final:
                # Stored before published and before the XACK that follows in this pipeline,
                # so a final the client may have missed is always there to replay.
                pipe.append(("XADD", keys.results(sess.session_id), "MAXLEN", "~",
                             self.settings.results_maxlen, "*", "m", payload))  # fmt: skip
                if not sess.has_results:  # the stream is new: give it its TTL this round
                    sess.has_results, sess.refreshed_at = True, float("-inf")
                pipe.append(self.audit.command("transcript", sess.session_id,
                                               seq=result.seq, text=result.text))  # fmt: skip
            pipe.append(("PUBLISH", keys.transcripts(sess.client_id), payload))

    def _sweep(self, pipe: list[Command]) -> None:
        now = time.monotonic()
        if now - self._last_sweep < IDLE_SESSION_S / 10:
            return
        self._last_sweep = now
        idle = [v for v in self.sessions.values() if now - v.last_seen > IDLE_SESSION_S]
        for sess in idle:
            # Its finals are decoded first (its audio may be resumed), then it is dropped.
            sess.last_seen = now
            self._flush(pipe, sess, None, SessionControl(sess.session_id, sess.client_id, 0, "end"))
            pipe.append(("EXPIRE", keys.results(sess.session_id), self.settings.results_ttl))
            if not sess.writing:
                acks: list[bytes] = []
                self._settle(pipe, acks, sess)
                self._commit(pipe, acks)
            self._mark_due(sess)  # the caller, _handle, wakes the decode loop
            log.info("%s: session %s idle for %.0f s, dropped", self.name, sess.session_id,
                     IDLE_SESSION_S)  # fmt: skip

    def _flush(
        self, pipe: list[Command], sess: _Session, entry_id: bytes | None, control: SessionControl
    ) -> None:
        """End the session's utterance in progress; `control` is answered (see _settle)
        once the finals owed by then are out."""
        self._publish(pipe, sess, sess.engine.flush())
        sess.markers.append(_Marker(sess.engine.finals_cut, entry_id, control))

    def _mark_due(self, sess: _Session) -> None:
        """Have the decode loop look at the session if it owes work now."""
        if _owes(sess):
            self._due[sess.session_id] = sess


def _voiced(job: Job, out: Any) -> Any:
    """A final's output with its speaker's voice, where its session diarizes (in the
    decode thread: the embedding costs about what a partial does)."""
    if job.final and job.options.diarize and isinstance(out, Decoded) and out.text:
        try:
            return out._replace(voice=speakers.embed(job.audio))
        except Exception:  # the final goes out all the same, with the likeliest speaker
            log.exception("a voice embedding failed")
    return out


def _who(speakers: Speakers, result: Result) -> tuple[str, list[str]]:
    """A final's speaker, and each word's where more than one speaks in it (else none:
    every word is the final's speaker's)."""
    start = result.start or 0.0
    turns = speakers.label(result.voice, (result.end or start) - start)
    if len(turns) == 1:
        return turns[0][1], []
    said: list[str] = []
    for _, word_start, word_end, _ in result.words:
        middle = (word_start + word_end) / 2 - start
        said.append([label for at, label in turns if at <= middle][-1] if middle >= 0
                    else turns[0][1])  # fmt: skip
    if not said:
        return turns[0][1], []
    # The final's own speaker: whose words take longest.
    spoken: dict[str, float] = {}
    for (_, word_start, word_end, _), label in zip(result.words, said, strict=True):
        spoken[label] = spoken.get(label, 0.0) + word_end - word_start
    return max(spoken, key=lambda label: spoken[label]), said


def _smoothed(previous: float, share: float) -> float:
    """A share reported in heartbeats, smoothed over beats (BUSY_WEIGHT)."""
    return round((1 - BUSY_WEIGHT) * previous + BUSY_WEIGHT * share, 3)


def _owes(sess: _Session) -> bool:
    """Whether the session has a final or a partial to decode now (or soon)."""
    engine = sess.engine
    return engine.final_since() is not None or engine.partial_since(EARLY_PARTIAL_S) is not None


def _entries(reply: Any) -> list[Entry]:
    """The entries of a single-stream XREADGROUP reply as Redis sends it (RESP2:
    [[stream, entries]]; an entry deleted since it was delivered has no fields)."""
    return raw_stream_entries(reply[0][1]) if reply else []


def _lag_ms(entries: list[Entry]) -> int:
    """How long the oldest of `entries` waited: now less the time in its id (Redis's
    clock, the same host's in every tree `hark up` starts)."""
    if not entries:
        return 0
    added_ms = int(entries[0][0].split(b"-", 1)[0])
    return max(0, int(time.time() * 1000) - added_ms)
