"""One client session in the gateway: its ids, its order of replies, its outgoing queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any, cast

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.http import WebSocketWriter

from services.gateway.decode import AudioDecoder
from services.gateway.limits import Lease
from services.gateway.metrics import GatewayMetrics
from services.gateway.protocol import AudioFormat, ClientError, error_reply
from shared.messages import ActorError, Flushed, Message, SpeechEvent, Transcript
from shared.tasks import Event

log = logging.getLogger(__name__)

STALLED_CLOSE_S = 2.0


class _Collected:
    """Where a framer's writer writes: a list of bytes, taken out by `take`."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


class _NeverPaused:
    _paused = False


class Framer:
    """WebSocket text frames (server side: unmasked, uncompressed) as bytes, framed by
    aiohttp's own writer, so several can go to a connection in one write."""

    def __init__(self) -> None:
        self._out = _Collected()
        self._writer = WebSocketWriter(cast(Any, _NeverPaused()), cast(Any, self._out))

    def text(self, texts: list[str]) -> bytes:
        for text in texts:
            # send_frame writes the frame, then waits only for a paused protocol's
            # drain, which this one never is: one step runs it to its end.
            step = self._writer.send_frame(text.encode(), WSMsgType.TEXT)
            with contextlib.suppress(StopIteration):
                step.send(None)
                raise RuntimeError("aiohttp's frame writer waited")
        return self._out.take()


FRAMES = Framer()


class AckWait:
    """Acks that wait a moment for another reply to go out with (HARK_ACK_WAIT).

    A chunk's ack is ready when Redis has stored the chunk; its transcript follows a
    few milliseconds later. Sent apart they cost the gateway two writes and the client
    two reads a chunk, the largest share of either's CPU at real-time pace. So an ack
    waits, at most `wait` seconds, for the session's next reply of any other kind,
    and leaves in the same write, ahead of it; with none, it leaves alone at the end
    of its wait. The waits share one timer: they all last the same, so they end in
    the order they began. A wait whose ack has left with another reply ends with
    nothing to send: it does not send an ack that began waiting after it.
    """

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._due: deque[tuple[float, Session]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        # The loop of the first hold, looked up once: on Python 3.11 each lookup makes a
        # getpid() call (at 1,000 streams, 10,000 a second of them).
        self._loop: asyncio.AbstractEventLoop | None = None

    def hold(self, session: Session) -> None:
        """Flush `session` at the end of the wait, unless something flushes it sooner."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        when = session.ack_due = loop.time() + self.wait
        self._due.append((when, session))
        if self._timer is None:
            self._timer = loop.call_at(when, self._expire)

    def _expire(self) -> None:
        loop = self._loop
        assert loop is not None  # set by the hold that set the timer
        now, due = loop.time(), self._due
        while due and due[0][0] <= now:
            when, session = due.popleft()
            if session.ack_due == when:  # else a later wait of the session is its own
                session.flush()
        self._timer = loop.call_at(due[0][0], self._expire) if due else None


@dataclass
class SessionStats:
    chunks: int = 0
    bytes: int = 0
    finals: int = 0
    errors: int = 0
    # Errors the client caused, by code: (how many, the first one's message). Logged
    # and audited once per session and code, so no client can flood the log or push
    # other sessions' history out of the capped audit stream.
    error_kinds: dict[str, tuple[int, str]] = field(default_factory=dict)


class Session:
    """A client's session on this gateway (`/ws`).

    Replies leave in a fixed order: a chunk's ack before any result for it, finals in
    seq order and each once (a result redelivered after a transcriber restart has a
    seq already delivered and is dropped). The replies of one loop iteration go to the
    socket in one write, with any acks that waited for them (AckWait). Replies wait
    in a queue only while the client's socket is full, and the queue is bounded: at
    three quarters full the client gets a warning, when full the connection is closed
    with 1013, so a client that stops reading cannot grow the gateway's memory.
    """

    PROTOCOL = "ws"

    def __init__(
        self,
        ws: web.WebSocketResponse,
        *,
        transport: asyncio.Transport | None,
        session_id: str,
        client_id: str,
        resume_token: str,
        actor: str,
        fmt: AudioFormat,
        queue_limit: int,
        metrics: GatewayMetrics,
        ack_wait: AckWait | None = None,
    ) -> None:
        self.ws = ws
        self.transport = transport
        self.session_id = session_id
        self.client_id = client_id
        self.resume_token = resume_token
        self.actor = actor
        self.fmt = fmt
        self.queue_limit = queue_limit
        self.metrics = metrics
        self.stats = SessionStats()
        self.last_seq = 0  # last seq given to an accepted chunk
        self.seq_mark = 0  # last_seq when the gateway last fell behind (see _shed_loop)
        self.lease: Lease | None = None  # its hold on the per-key/per-address limits
        self.decoder: AudioDecoder | None = None  # for audio that is not PCM, from its first
        self.deadline: asyncio.TimerHandle | None = None  # HARK_LIMIT_SESSION_S
        self.acked_seq = 0
        self.audio_s = 0.0  # seconds of audio accepted (for chunk timestamps)
        self.delivered_seq = 0  # last final sent to the client
        self.covered_seq = 0  # last chunk a flush confirmed (silence gets no final)
        self.final_end_s = 0.0  # where the audio of the last final delivered ends
        self.incomplete: str | None = None  # why a close's flush did not finish
        self.closing = False
        self.close_reason = "disconnected"  # why the session ended, for the audit log
        self.close_flushed = Event()
        # Set once a close has marked the session's record closed (or failed to): a resume
        # that takes over during a close waits for it (see Gateway._resume).
        self.marking: Event | None = None
        self.opened_at = time.time()
        self._held: list[Transcript | SpeechEvent] = []  # results that wait for their ack
        self._event_at: dict[str, float] = {}  # the time of the last event of each kind sent
        self._backlog: list[Message] | None = None  # live results held during a replay
        self.ended = Event()
        # Held around every write to the actor's mailbox, and while the session moves to
        # another actor, so no chunk lands in the old mailbox after the move read it.
        self.lock = asyncio.Lock()
        # Lists, not deques, though both are queues: they stay short, and an empty deque
        # costs 760 bytes against a list's 56, on each of ten thousand idle sessions.
        self.storing: list[asyncio.Future[Any]] = []  # chunks queued for Redis, in order
        self._progress = Event()  # set at each final delivered
        self._loop = asyncio.get_running_loop()
        self._batch: list[str] = []  # replies of this loop iteration (see send_text)
        self._ack_wait = ack_wait  # None: acks leave with the loop iteration's batch
        self.ack_due = 0.0  # when its latest wait in _ack_wait ends (loop time)
        # A flush of _batch is due at the end of this iteration; while not, what _batch
        # holds is acks waiting in _ack_wait.
        self._flush_soon = False
        self._out: list[str] = []  # replies waiting for the client's socket
        self._writer: asyncio.Task[None] | None = None  # writes _out while it is not empty
        self._warned = False
        self._silent = False  # nothing more is written (stopped, overflowed, or gone)

    # -- outgoing -------------------------------------------------------------------

    def send(self, reply: dict[str, Any]) -> None:
        """Send a reply, or queue it; never blocks. Overflow closes the session (see
        class doc)."""
        if not self._silent:
            self.send_text(json.dumps(reply))

    def send_text(self, text: str, *, ack: bool = False) -> None:
        """`send` for a reply already in JSON; an `ack` may wait for company (AckWait)."""
        if self._silent:
            return
        if self._out:  # the client's socket is full: behind what waits
            self._queue(text)
            return
        # Replies of one loop iteration (a pipeline's acks, a read's results) leave
        # together: one write, one system call, for all of them.
        self._batch.append(text)
        if self._flush_soon:
            return
        if ack and self._ack_wait is not None:
            if len(self._batch) == 1:  # the first to wait: the others wait with it
                self._ack_wait.hold(self)
            return
        self._flush_soon = True
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the batch at once where nothing waits in the transport's buffer (most
        of the time: no writer task, no wait); else queue it for the writer task."""
        batch, self._batch = self._batch, []
        self._flush_soon = False
        if not batch or self._silent:
            return
        transport = self._open()
        if transport is not None and not self._out and not transport.get_write_buffer_size():
            transport.write(FRAMES.text(batch))
            return
        for text in batch:
            if not self._silent:
                self._queue(text)

    def _open(self) -> asyncio.Transport | None:
        """The connection's transport, while it takes frames (None, and silent, once
        it is gone or closing: nothing more can go)."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.ws.closed:
            self._silent = True
            return None
        return transport

    def _queue(self, text: str) -> None:
        if len(self._out) >= self.queue_limit:
            self._overflow()
            return
        if not self._warned and len(self._out) >= self.queue_limit * 3 // 4:
            self._warned = True
            self.metrics.errors.labels("slow_consumer").inc()
            # Ahead of the replies queued here (it answers none of them), so a client
            # closed for overflow still finds it before the close.
            warning = json.dumps(error_reply(
                "slow_consumer",
                f"replies are piling up ({len(self._out)} waiting); read faster or be closed",
            ))  # fmt: skip
            if (transport := self._open()) is not None:
                transport.write(FRAMES.text([warning]))
        self._out.append(text)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(), name=f"ws-writer-{self.session_id}")

    async def _write(self) -> None:
        """Write the queued replies in order (a frame waits while the client's socket is
        full); ends when the queue is empty."""
        try:
            while self._out:
                await self.ws.send_str(self._out.pop(0))
                if self._warned and len(self._out) < self.queue_limit // 4:
                    self._warned = False
        except ConnectionError:
            self._silent = True
            self._out.clear()
        finally:
            self._writer = None

    def _overflow(self) -> None:
        self.closing = True  # no more audio is taken from it
        self.close_reason = "slow_consumer"
        log.warning("session %s: outgoing queue full (%d), closing", self.session_id,
                    len(self._out))  # fmt: skip
        self._stop_writing()
        task = asyncio.create_task(self._close_stalled(), name=f"close-{self.session_id}")
        task.add_done_callback(_log_failure)

    def _stop_writing(self) -> None:
        """Write nothing more: drop what is queued and stop the writer task."""
        self._silent = True
        self._batch.clear()
        self._out.clear()
        if self._writer is not None:
            self._writer.cancel()

    async def _close_stalled(self) -> None:
        # The close frame waits behind what the client has not read; past the grace
        # aiohttp drops the connection instead (the cancelled close aborts the transport).
        reason = b"client too slow: outgoing queue full"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=reason), STALLED_CLOSE_S
            )
        # A client that reads nothing never takes the close frame; one that sends
        # nothing either would hold the connection (and its handler) for as long as it
        # likes: close means close.
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    async def drain(self, grace: float) -> None:
        """Wait until the queued replies are written (or `grace` seconds pass), then stop."""
        self.flush()
        if self._writer is not None:
            await asyncio.wait([self._writer], timeout=grace)
        await self.stop_writer()

    async def say_and_close(self, reply: dict[str, Any], code: int, reason: bytes) -> None:
        """Send a last reply, give the client a moment to get it, then close."""
        self.send(reply)
        await self.drain(grace=1.0)
        await self.close(code, reason)

    async def close(self, code: int = WSCloseCode.OK, reason: bytes = b"") -> None:
        """Close the connection, the replies of this loop iteration written first (a
        close frame ends what the connection takes)."""
        self.flush()
        await self.ws.close(code=code, message=reason)

    def abandon(self) -> None:
        """Stop writing for a session that never opened (nothing was sent to wait for)."""
        self._stop_writing()

    async def stop_writer(self) -> None:
        writer = self._writer
        self._stop_writing()
        if writer is not None:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await writer

    async def stored(self) -> None:
        """Until every chunk queued for Redis has its answer (they finish in order)."""
        if self.storing:
            await asyncio.wait([self.storing[-1]])

    # -- incoming from the transcriber ---------------------------------------------------

    def acked(self, seq: int, size: int) -> None:
        """Chunk `seq` is stored in the mailbox: ack it, then release results held for it."""
        self.acked_seq = seq
        self.stats.chunks += 1
        self.stats.bytes += size
        self.ack_reply(seq, size)
        if self._held:
            ready = [t for t in self._held if t.seq <= seq]
            self._held = [t for t in self._held if t.seq > seq]
            for result in ready:
                self._deliver(result)

    def ack_reply(self, seq: int, size: int) -> None:
        """The client's ack of an accepted chunk (a protocol adapter may differ)."""
        self.send_text(f'{{"status": "received", "size": {size}, "seq": {seq}}}', ack=True)

    @property
    def replaying(self) -> bool:
        return self._backlog is not None

    def begin_replay(self) -> None:
        """Hold live results until `replay()` has sent the stored ones before them."""
        self._backlog = []

    def replay(self, finals: list[Transcript]) -> None:
        """Send stored finals (seq order), then the live results that came meanwhile.
        A final whose chunk is not acked yet waits for its ack, as a live one does."""
        for transcript in finals:
            if transcript.seq > self.acked_seq:
                self._held.append(transcript)
            else:
                self._deliver(transcript, replayed=True)
        backlog, self._backlog = self._backlog or [], None
        for msg in backlog:
            self.on_message(msg)

    def on_message(self, msg: Message) -> None:
        if self._backlog is not None:
            self._backlog.append(msg)
        elif isinstance(msg, Transcript | SpeechEvent):
            if msg.seq > self.acked_seq:  # result overtook the ack of its chunk
                self._held.append(msg)
            else:
                self._deliver(msg)
        elif isinstance(msg, Flushed):
            # Everything up to msg.seq is covered now, silence with no final included.
            self.covered_seq = max(self.covered_seq, msg.seq)
            if msg.op == "finalize":
                self.finalized_reply(msg.seq)
            elif msg.op == "close":
                self.close_flushed.set()
            self._progress.set()
        elif isinstance(msg, ActorError):
            self.client_error(msg.code)
            self.send(error_reply(msg.code, msg.error, msg.seq))

    def finalized_reply(self, seq: int) -> None:
        """Tell the client its finalize is done (a protocol adapter may say it otherwise)."""
        self.send({"status": "finalized", "seq": seq})

    def client_error(self, code: str) -> None:
        """Count an error the client is told about: in the session and in the metrics."""
        self.stats.errors += 1
        self.metrics.errors.labels(code).inc()

    def _deliver(self, t: Transcript | SpeechEvent, replayed: bool = False) -> None:
        if t.seq <= self.delivered_seq:  # redelivered after a transcriber restart
            return
        if isinstance(t, SpeechEvent):
            # Each kind comes later in the stream than the last: one heard again in the
            # audio a restarted transcriber reads again is not.
            if self.fmt.events and t.at > self._event_at.get(t.event, -1.0):
                self._event_at[t.event] = t.at
                self.event_reply(t)
            return
        if not t.final and not self.fmt.interim:
            return
        if t.final:
            self.delivered_seq = t.seq
            if t.end is not None:
                self.final_end_s = max(self.final_end_s, t.end)
            self._progress.set()
            self.stats.finals += 1
            if not replayed:
                self.metrics.observe_latency(max(0.0, time.time() - t.received_at))
            self.metrics.finals += 1
        else:
            self.metrics.partials += 1
        self.transcript_reply(t, replayed)

    def event_reply(self, event: SpeechEvent) -> None:
        """Tell the client of voice activity (a protocol adapter may say it otherwise)."""
        where = "start" if event.event == "speech_started" else "end"
        self.send({"status": event.event, "session_id": self.session_id, "seq": event.seq,
                   where: event.at})  # fmt: skip

    def transcript_reply(self, t: Transcript, replayed: bool) -> None:
        """Send a result to the client (a protocol adapter may hold it instead).

        The reply of every chunk, so its fixed part is formatted here, strings escaped by
        json's own encoder: the text json.dumps makes of the same dict, byte for byte, in
        0.4 µs against 2.5."""
        text = (
            f'{{"status": "transcript", "client_id": {_json_str(self.client_id)}, '
            f'"session_id": {_json_str(self.session_id)}, "text": {_json_str(t.text)}, '
            f'"seq": {t.seq}, "final": {"true" if t.final else "false"}'
        )
        extra: dict[str, Any] = {}
        if t.start is not None:
            extra["start"], extra["end"] = t.start, t.end
        if t.speaker is not None:
            extra["speaker"] = t.speaker
        if t.words:
            extra["words"] = [{"word": w, "start": s, "end": e, "conf": p}
                              for w, s, e, p in t.words]  # fmt: skip
            if t.speaker is not None:
                for word, speaker in zip(extra["words"], word_speakers(t), strict=True):
                    word["speaker"] = speaker
        if t.language is not None:
            extra["language"] = t.language
        if replayed:
            extra["replayed"] = True
        if extra:
            text += ", " + json.dumps(extra)[1:-1]
        self.send_text(text + "}")

    @property
    def covered(self) -> bool:
        """Whether every accepted chunk is covered by a final sent to the client (or by
        a flush that found it silent)."""
        return max(self.delivered_seq, self.covered_seq) >= self.last_seq

    @property
    def owed_audio_s(self) -> float:
        """Seconds of accepted audio that no final delivered covers yet (an engine
        without times counts all of it)."""
        return max(0.0, self.audio_s - self.final_end_s)

    async def answered(self, done: Callable[[], bool], grace: float) -> bool:
        """Until `done()` (a flush answered): True. False once nothing came for `grace`
        seconds plus the audio still owed a final (a transcriber may need as long as the
        audio lasts to decode it while others' finals go first): the allowance starts
        again at each final delivered, so a long stream that makes progress is never
        cut off by a fixed bound."""
        while not done():
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), grace + self.owed_audio_s)
            except TimeoutError:
                return done()
        return True

    def stop_waiting_for_close(self) -> None:
        """End a wait for the close's answer now (another connection takes it over)."""
        self.close_flushed.set()
        self._progress.set()

    async def settled(self) -> None:
        """Until every accepted chunk is covered (see `covered`)."""
        while not self.covered:
            self._progress.clear()
            await self._progress.wait()

    def error_reply(self, exc: ClientError) -> dict[str, Any]:
        """The reply to a client's error (a protocol adapter may word it otherwise)."""
        return exc.reply()

    def say_hello(self) -> None:
        """The first words to a new client (vosk clients get none)."""
        self.send(self.greeting())

    def greeting(self) -> dict[str, Any]:
        return {
            "status": "ready", "session_id": self.session_id, "client_id": self.client_id,
            "resume_token": self.resume_token, "actor": self.actor, **self.fmt.public(),
        }  # fmt: skip

    def resumed(self, replayed: int) -> dict[str, Any]:
        """The greeting of a resumed session: resend audio after `last_seq`."""
        return {**self.greeting(), "status": "resumed", "last_seq": self.last_seq,
                "replayed": replayed}  # fmt: skip

    def describe(self) -> dict[str, Any]:
        """The session as `/sessions` shows it to an operator (no token, no audio)."""
        s = self.stats
        return {
            "session_id": self.session_id, "client_id": self.client_id,
            "protocol": self.PROTOCOL, "transcriber": self.actor, **self.fmt.public(),
            "opened_at": round(self.opened_at, 3),
            "age_s": round(time.time() - self.opened_at, 3),
            "chunks": s.chunks, "bytes": s.bytes, "finals": s.finals, "errors": s.errors,
            "last_seq": self.last_seq, "delivered_seq": self.delivered_seq,
            "queued_replies": len(self._out), "closing": self.closing,
        }  # fmt: skip

    def ended_reply(self, summary: dict[str, Any]) -> dict[str, Any]:
        """What the client is told when an operator ends the session."""
        return summary

    def summary(self, complete: bool) -> dict[str, Any]:
        s = self.stats
        summary = {
            "status": "closed", "session_id": self.session_id, "chunks": s.chunks,
            "bytes": s.bytes, "finals": s.finals, "last_seq": self.last_seq,
            "complete": complete,
        }  # fmt: skip
        if not complete:
            summary.update(self.missing())
        return summary

    def missing(self) -> dict[str, Any]:
        """What an incomplete close lacks: the chunks no final or flush covers, and why."""
        first = max(self.delivered_seq, self.covered_seq) + 1
        return {
            "missing_seqs": [first, self.last_seq] if first <= self.last_seq else [],
            "why": self.incomplete or "the transcriber's answer did not come",
        }


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("closing a websocket failed", exc_info=task.exception())


def word_speakers(t: Transcript) -> list[str | None]:
    """The speaker of each of a final's words: its own, or the final's."""
    if len(t.speakers) == len(t.words):
        return [str(s) for s in t.speakers]
    return [t.speaker] * len(t.words)
