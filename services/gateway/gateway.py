"""The gateway actor's core: sessions in, audio to mailboxes, results back out."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import secrets
import time
from asyncio import Future
from collections import deque
from collections.abc import Coroutine, Iterator, Mapping
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway import resume
from services.gateway.decode import decoder_for
from services.gateway.hub import Hub
from services.gateway.limits import Lease, LimitExceeded, Limits
from services.gateway.metrics import GatewayMetrics
from services.gateway.original import OriginalSession
from services.gateway.protocol import AudioFormat, ClientError, error_reply, parse_control
from services.gateway.router import Router
from services.gateway.session import AckWait, Session
from shared import fds, keys, logs
from shared.actor import ActorRuntime
from shared.audit import Audit
from shared.auth import ApiKeys, Principal, origin_allowed
from shared.config import SAMPLE_WIDTHS, Settings
from shared.http_errors import json_error
from shared.messages import (
    ActorDown,
    AudioChunk,
    Message,
    SessionControl,
    Transcript,
    unknown_language,
)
from shared.redis_util import Coalescer
from shared.tasks import Event, cancel_and_wait

log = logging.getLogger(__name__)

# The principal of an authenticated handshake, and the connection's hold on its limits.
PRINCIPAL = web.RequestKey("principal", Principal)
LEASE = web.RequestKey("lease", Lease)
# Errors a client can cause many times a second: not logged or audited one by one.
QUIET_CODES = frozenset({"overloaded", "rate_limited"})
# How long `close` waits for the transcriber's answer when nothing comes, beyond as long
# as the audio still owed a final lasts (Session.flushed).
CLOSE_FLUSH_GRACE_S = 10.0
# How long a takeover waits for the old connection's close to end or mark the record.
CLOSE_FLUSH_TIMEOUT_S = CLOSE_FLUSH_GRACE_S
# How long a close under way may take, beyond the audio it owes finals for: its flush's
# grace, then its last replies' grace periods.
CLOSING_S = CLOSE_FLUSH_GRACE_S + 5.0
# How long `stop` lets the sessions it closed finish ending (each drains for up to 2 s).
ENDING_TIMEOUT_S = 3.0
# Audio is refused once its transcriber is this many times HARK_MAX_LAG behind; sessions
# are shed once the gateway is this many times HARK_MAX_STORE_LAG behind.
OVERLOAD_FACTOR = 2.0
# Chunks one session may have on their way to Redis; past it the gateway reads no more
# of its frames until the oldest is stored, so one client cannot fill the queue alone.
# Not much smaller: what a session has not read is invisible to the store lag, and a
# few fast senders must be able to show that the gateway is behind.
STORE_WINDOW = 256
# While the gateway is that far behind, it looks every tick and closes the heaviest
# sessions (1013), at least this share of them at a time, until it catches up.
SHED_TICK_S = 0.2
SHED_SHARE = 0.05
# How long the gateway must have been that far behind before it sheds, and how many
# chunks a session must have sent since for shedding it to relieve anything.
SHED_HOLD_S = 0.4
SHED_MIN_CHUNKS = 2


class Gateway:
    """Owns the gateway's Redis-facing parts; `handle_ws` serves one client connection."""

    def __init__(self, settings: Settings, redis: Redis, name: str = "gateway") -> None:
        self.settings = settings
        self.redis = redis
        self.name = name
        self.runtime = ActorRuntime(settings, redis, name, "gateway")
        self.keys = ApiKeys.from_settings(settings)  # None: open to anyone
        self.limits = Limits(settings)
        self.coalescer = Coalescer(redis)
        self.fds = fds.Usage()
        self.audit = Audit(redis, name, settings.audit_maxlen, self.coalescer)
        self.hub = Hub(redis, on_control=self._on_control, on_reconnect=self._catch_up_all)
        self.router = Router(redis, settings.heartbeat_interval, settings.heartbeat_misses,
                             on_down=self._actor_down, max_lag=settings.max_lag,
                             max_busy=settings.max_busy)  # fmt: skip
        self._jobs: set[asyncio.Task[None]] = set()
        self.sessions: dict[str, Session] = {}
        self.metrics = GatewayMetrics(lambda: len(self.sessions))
        self.ack_wait = AckWait(settings.ack_wait) if settings.ack_wait else None
        self.accepting = True  # False from the start of drain() on
        self._beat_task: asyncio.Task[None] | None = None
        self._shed_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.runtime.register()
        await self.hub.start()
        await self.router.start()
        await self.runtime.beat("running", 0)
        self._beat_task = asyncio.create_task(self._beat_loop(), name="gateway-heartbeat")
        self._shed_task = asyncio.create_task(self._shed_loop(), name="gateway-shed")
        await self.audit.log("actor_start")

    async def stop(self) -> None:
        """Drain, then close sessions (1001) and release Redis resources.

        Draining: new sessions and new audio are refused (`shutting_down`), each
        session's utterance is finalized, and the gateway waits up to
        `drain_timeout` for the finals of every chunk it has acked.
        """
        await self.drain()
        for session in list(self.sessions.values()):
            session.close_reason = "shutdown"
            with contextlib.suppress(Exception):
                await session.close(WSCloseCode.GOING_AWAY, b"server shutting down")
        await cancel_and_wait(self._beat_task)
        await cancel_and_wait(self._shed_task)
        if self._jobs:  # the closed sessions' endings (their audit entries) among them
            await asyncio.wait(list(self._jobs), timeout=ENDING_TIMEOUT_S)
        for task in list(self._jobs):
            await cancel_and_wait(task)
        await self.router.stop()
        await self.hub.stop()
        await self.runtime.clear()
        await self.audit.log("actor_stop")
        await self.coalescer.close()

    async def drain(self) -> None:
        """Stop taking sessions and audio; wait for the finals of what was acked. Once."""
        if not self.accepting:
            return
        self.accepting = False
        busy = [s for s in self.sessions.values() if s.delivered_seq < s.last_seq]
        await self.audit.log("gateway_drain", sessions=len(self.sessions), busy=len(busy))
        if not busy:
            return
        for session in busy:
            with contextlib.suppress(ClientError):
                await self.control(session, "finalize")
        waiting = asyncio.gather(*(s.settled() for s in busy))
        try:
            await asyncio.wait_for(waiting, self.settings.drain_seconds)
        except TimeoutError:
            left = sum(s.last_seq - s.delivered_seq for s in busy)
            log.warning("drain: %d chunks still without a final after %.1f s; their "
                        "clients can resume", left, self.settings.drain_seconds)  # fmt: skip

    async def _beat_loop(self) -> None:
        # The gateway's message loop is its event loop: a beat from a task in it shows
        # the loop still runs.
        while True:
            try:
                await self.runtime.beat("running", len(self.sessions))
            except RedisError:
                log.warning("heartbeat write failed", exc_info=True)
            await asyncio.sleep(self.settings.heartbeat_interval / 2)

    async def _shed_loop(self) -> None:
        """Close sessions while this gateway cannot keep up with the audio it reads.

        A gateway short of CPU falls behind storing the audio it reads. Refusing every
        session's audio a little would spoil all of them; sessions are closed
        instead (`session_shed`, 1013; they can resume later), those that sent the most
        since it fell behind first, the newest among equals. It sheds once it has been
        more than twice HARK_MAX_STORE_LAG behind for SHED_HOLD_S, and only sessions
        that sent SHED_MIN_CHUNKS chunks or more since it fell behind: closing one that
        sent a single chunk (ten thousand clients sending once at the same moment) frees
        nothing. It closes about half the share of its Redis commands (audio for the most
        part) it could not get answered over the last second, at least SHED_SHARE of
        those sessions, then waits as long as it is
        behind, for what was queued before to go through. A Redis that answers nothing
        is not overload: it sheds nothing then.
        """
        limit = OVERLOAD_FACTOR * self.settings.max_store_lag
        loop = asyncio.get_running_loop()
        window: deque[tuple[int, int]] = deque(maxlen=round(1 / SHED_TICK_S) + 1)
        behind_since: float | None = None
        quiet_until = 0.0
        while True:
            await asyncio.sleep(SHED_TICK_S)
            window.append((self.coalescer.submitted, self.coalescer.answered))
            lag, now = self.coalescer.lag_s(), loop.time()
            if lag <= limit:
                behind_since = None
                continue
            if behind_since is None:
                behind_since = now
                for session in self.sessions.values():
                    session.seq_mark = session.last_seq
            if now - behind_since < SHED_HOLD_S or now < quiet_until:
                continue
            offered = window[-1][0] - window[0][0]
            stored = window[-1][1] - window[0][1]
            if stored == 0:  # Redis is not answering (away, or paused): not ours to shed
                continue
            excess = max(0.0, 1 - stored / offered) if offered else 0.0
            sending = [s for s in self.sessions.values()
                       if not s.closing and s.last_seq - s.seq_mark >= SHED_MIN_CHUNKS]  # fmt: skip
            # Half the excess: stores answered lag behind those offered by the pipeline
            # on the wire, so the estimate runs high; the next round sheds more if needed.
            count = math.ceil(len(sending) * max(SHED_SHARE, excess / 2))
            if count:
                log.warning("gateway %.1f s behind storing audio (%.0f %% of it over the "
                            "last second): closing %d of the %d sessions sending",
                            lag, 100 * excess, count, len(sending))  # fmt: skip
            # The heaviest senders since it fell behind first, the newest among equals
            # (a stable sort of sessions in the order they opened, reversed).
            sending.reverse()
            sending.sort(key=lambda s: s.last_seq - s.seq_mark, reverse=True)
            for session in sending[:count]:
                self.shed(session)
            quiet_until = now + lag

    def shed(self, session: Session) -> None:
        """Close a session for overload (1013); its client may resume it later."""
        session.closing = True
        session.close_reason = "shed"
        session.client_error("session_shed")
        reply = error_reply("session_shed", "the gateway is overloaded and closes this "
                            "session: resume it in a few seconds")  # fmt: skip
        self._spawn(session.say_and_close(reply, WSCloseCode.TRY_AGAIN_LATER, b"overloaded"),
                    f"shed-{session.session_id}")  # fmt: skip

    # -- one connection ------------------------------------------------------------

    def admit(self) -> None:
        """Refuse a new connection with HTTP 503 (before the upgrade, so it costs next
        to nothing) when this gateway is full or every transcriber is behind."""
        if len(self.sessions) >= self.settings.max_sessions:
            message = (f"this gateway holds its limit of {self.settings.max_sessions} "
                       "sessions; try again later")  # fmt: skip
        elif self.fds.pressed():
            message = (f"this gateway holds {self.fds.open()} of its "
                       f"{fds.limits()[0]} file descriptors; try again later")  # fmt: skip
        elif self.coalescer.lag_s() > self.settings.max_store_lag:
            message = (f"this gateway is more than {self.settings.max_store_lag:g} s behind "
                       "storing audio; try again later")  # fmt: skip
        elif self.router.saturated():
            message = (f"every transcriber is more than {self.settings.max_lag:g} s behind or "
                       "has no room for another speaker (HARK_MAX_BUSY "
                       f"{self.settings.max_busy:g}); try again later")  # fmt: skip
        else:
            return
        self.metrics.errors.labels("overloaded").inc()
        retry = str(max(1, round(self.settings.heartbeat_interval * 2)))
        raise json_error(web.HTTPServiceUnavailable, "overloaded", message,
                         headers={"Retry-After": retry})  # fmt: skip

    @contextlib.contextmanager
    def admitted(
        self, request: web.Request, new: bool = True, schemes: tuple[str, ...] = ("bearer",)
    ) -> Iterator[web.WebSocketResponse]:
        """Let a handshake in, or raise its HTTP error (see let_in). Inside: the
        connection's WebSocket, not prepared yet."""
        with self.let_in(request, new, schemes) as protocols:
            yield self._websocket(protocols)

    @contextlib.contextmanager
    def let_in(
        self, request: web.Request, new: bool = True, schemes: tuple[str, ...] = ("bearer",)
    ) -> Iterator[tuple[str, ...]]:
        """Let a request that opens sessions in (a handshake, a file to transcribe), or
        raise its HTTP error: the Origin and the credentials (a key in an Authorization
        header of one of `schemes`), the gateway's load (for `new` sessions: a resume
        was counted already), the limits of its key and address. Inside: the
        subprotocols to answer a handshake with; the request's hold on the limits is
        given back at the end."""
        protocols = self._check_access(request, schemes)
        if new:
            self.admit()
        lease = self._enter(request)
        try:
            yield protocols
        finally:
            self.limits.release(lease)

    def _check_access(
        self, request: web.Request, schemes: tuple[str, ...] = ("bearer",)
    ) -> tuple[str, ...]:
        """Let a handshake through or raise: 403 for an Origin not allowed, 401 without a
        valid key or token (where keys are set). Returns the subprotocols to answer with."""
        if not origin_allowed(request, self.settings.allowed_origins):
            self.metrics.errors.labels("forbidden_origin").inc()
            raise json_error(web.HTTPForbidden, "forbidden_origin",
                             "connections from this origin are not allowed")  # fmt: skip
        if self.keys is None:
            return ()
        try:
            principal, protocol = self.keys.authenticate(request, schemes)
        except web.HTTPUnauthorized:
            self.metrics.errors.labels("unauthorized").inc()
            raise
        request[PRINCIPAL] = principal
        return () if protocol is None else (protocol,)

    def _websocket(self, protocols: tuple[str, ...]) -> web.WebSocketResponse:
        # Frames past twice the chunk limit are refused by aiohttp before they are
        # buffered (close 1009); smaller oversize frames get an error and the session goes on.
        # permessage-deflate is declined: browsers offer it, and its state costs about
        # 100 KB a connection for replies of a hundred bytes (and audio hardly shrinks).
        return web.WebSocketResponse(max_msg_size=2 * self.settings.max_chunk_bytes,
                                     heartbeat=30, protocols=protocols,
                                     compress=False)  # fmt: skip

    def _enter(self, request: web.Request) -> Lease:
        """Count a connection against its key's and its address's session limit (HTTP 429
        past it); the caller releases the lease when the connection ends."""
        principal = request.get(PRINCIPAL)
        try:
            lease = self.limits.admit(principal.key if principal else None, request.remote)
        except LimitExceeded as exc:
            self.metrics.errors.labels("too_many_sessions").inc()
            retry = {"Retry-After": f"{exc.retry_after:.0f}"}
            raise json_error(web.HTTPTooManyRequests, "too_many_sessions", exc.message,
                             headers=retry) from None  # fmt: skip
        request[LEASE] = lease
        return lease

    async def handle_ws(self, request: web.Request) -> web.StreamResponse:
        resuming = "session_id" in request.query or "resume_token" in request.query
        with self.admitted(request, new=not resuming) as ws:
            return await self._handle_ws(request, ws, resuming)

    async def handle_original(self, request: web.Request) -> web.StreamResponse:
        """`/original`: the original service's protocol (see original.py); no resume,
        no partials, 16 kHz 16-bit audio as it took."""
        with self.admitted(request) as ws:
            return await self._handle_ws(request, ws, False, OriginalSession)

    async def _handle_ws(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        resuming: bool,
        kind: type[Session] = Session,
    ) -> web.StreamResponse:
        await ws.prepare(request)
        if not self.accepting:
            self.metrics.errors.labels("shutting_down").inc()
            reply = error_reply("shutting_down", "the gateway is shutting down; reconnect")
            return await refuse(ws, reply, WSCloseCode.TRY_AGAIN_LATER)
        try:
            if resuming:
                session = await self._resume(ws, request)
            else:
                if kind is OriginalSession:
                    fmt = AudioFormat().updated({"interim": "false"})
                else:
                    fmt = AudioFormat().updated(dict(request.query))
                session = await self.open_session(ws, request, fmt, kind)
                if isinstance(session, OriginalSession):
                    session.max_chunk_bytes = self.settings.max_chunk_bytes
        except RedisError as exc:
            log.warning("session not opened: Redis: %s", exc)
            self.metrics.errors.labels("unavailable").inc()
            reply = error_reply("unavailable", "the session could not be opened; try again")
            return await refuse(ws, reply, WSCloseCode.TRY_AGAIN_LATER)
        except ClientError as exc:
            self.metrics.errors.labels(exc.code).inc()
            code = WSCloseCode.TRY_AGAIN_LATER if exc.code == "no_transcriber" else (
                WSCloseCode.POLICY_VIOLATION)  # fmt: skip
            return await refuse(ws, exc.reply(), code)
        try:
            if session.closing:  # a closed session, resumed to read what it missed
                await self._finish_close(session)
            else:
                await self._serve(session)
        finally:
            # Ending runs to its end even when this handler is cancelled (aiohttp cancels
            # the handlers of lost connections where handler_cancellation is on).
            await asyncio.shield(self._spawn(self.end(session), f"end-{session.session_id}"))
        return ws

    async def open_session(
        self,
        ws: web.WebSocketResponse,
        request: web.Request,
        fmt: AudioFormat,
        kind: type[Session],
    ) -> Session:
        self.check_language(fmt)
        actor = await self.router.pick()
        if actor is None:
            raise ClientError("no_transcriber", "no transcriber is running; try again shortly")
        session_id = secrets.token_hex(16)
        logs.SESSION.set(session_id)  # this connection's task: each line from here names it
        session = kind(
            ws, transport=request.transport, session_id=session_id, client_id=secrets.token_hex(16),
            resume_token=secrets.token_urlsafe(32), actor=actor, fmt=fmt,
            queue_limit=self.settings.session_queue, metrics=self.metrics,
            ack_wait=self.ack_wait,
        )  # fmt: skip
        try:
            await self._register(session, request, fmt)
        except BaseException:  # Redis failed, or the connection's task was cancelled
            self._discard(session)
            raise
        log.info("session %s open on %s", session.session_id, session.actor)
        session.say_hello()
        return session

    async def _register(self, session: Session, request: web.Request, fmt: AudioFormat) -> None:
        await self.hub.add(session)
        self.sessions[session.session_id] = session
        self._limit(session, request)
        principal = request.get(PRINCIPAL)
        record = {
            "client_id": session.client_id, "actor": session.actor,
            "key": principal.key if principal else "",  # a resume must come with the same
            "token_sha256": resume.token_hash(session.resume_token),
            "created_at": f"{time.time():.3f}", "gateway": self.name, **fmt.public(),
        }  # fmt: skip
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.session(session.session_id), mapping=_strings(record))
        pipe.expire(keys.session(session.session_id), self.settings.results_ttl)
        self.audit.add_to(pipe, "session_open", session.session_id, transcriber=session.actor,
                          peer=request.remote, key=principal and principal.key,
                          subject=principal and principal.subject)  # fmt: skip
        await pipe.execute()

    def _discard(self, session: Session) -> None:
        """Undo a session that did not open: none of it stays (its entry, its channel,
        its count on its transcriber, its timer, its writer task)."""
        self._forget(session)
        session.abandon()

    def _forget(self, session: Session) -> None:
        """Take a session out of this gateway's books: its entry, its channel, its count
        on its transcriber, its length timer. A resumed successor keeps its own."""
        if session.deadline is not None:
            session.deadline.cancel()
        if self.sessions.get(session.session_id) is session:
            del self.sessions[session.session_id]
        self.router.release(session.actor)
        self.hub.remove(session)

    def _limit(self, session: Session, request: web.Request) -> None:
        """Put the session under its connection's rate limits and its length limit."""
        session.lease = request.get(LEASE)
        if self.settings.limit_session_s is None or session.closing:
            return  # a closed session resumed only reads what it missed: nothing to end
        left = max(0.0, session.opened_at + self.settings.limit_session_s - time.time())
        session.deadline = asyncio.get_running_loop().call_later(
            left, lambda: self._spawn(self._too_long(session), f"too-long-{session.session_id}")
        )

    async def _too_long(self, session: Session) -> None:
        limit = self.settings.limit_session_s
        session.client_error("session_too_long")
        session.send(error_reply("session_too_long", f"a session may last {limit:g} s "
                                 "(HARK_LIMIT_SESSION_S): open a new one"))  # fmt: skip
        await self.end_session(session.session_id, "session_too_long")

    async def _resume(self, ws: web.WebSocketResponse, request: web.Request) -> Session:
        query = request.query
        after = query.get("last_final", "0")
        if not after.isdigit() or len(after) > 12:
            raise ClientError("bad_setting", "last_final must be a non-negative integer")
        principal = request.get(PRINCIPAL)
        asked = (query.get("session_id", ""), query.get("resume_token", ""),
                 principal.key if principal else "")  # fmt: skip
        found = await resume.load(self.redis, *asked)
        logs.SESSION.set(found.session_id)
        old = self.sessions.get(found.session_id)
        if old is not None:  # its connection is still open here: this one takes over
            # A close it is waiting on goes on here (its results come to this session now).
            old.stop_waiting_for_close()
            await old.close(WSCloseCode.POLICY_VIOLATION, b"resumed elsewhere")
            await asyncio.wait_for(old.ended.wait(), CLOSE_FLUSH_TIMEOUT_S)
            if old.marking is not None and not found.closed:
                # Its close (the client's, an operator's end) had begun but not yet marked
                # the record when it was read: once marked, this is a closed session resumed.
                await asyncio.wait_for(old.marking.wait(), CLOSE_FLUSH_TIMEOUT_S)
                found = await resume.load(self.redis, *asked)
        session = Session(
            ws, transport=request.transport, session_id=found.session_id, client_id=found.client_id,
            resume_token=query["resume_token"], actor=found.actor, fmt=found.fmt,
            queue_limit=self.settings.session_queue, metrics=self.metrics,
            ack_wait=self.ack_wait,
        )  # fmt: skip
        # A closed session can still be resumed (while its record lives) by a client
        # that lost its connection before the end of the close: it takes no more audio,
        # and gets the finals it missed, then the close's summary (see _finish_close).
        session.closing = found.closed
        self.router.claim(session.actor)
        try:
            finals = await self._bring_back(session, request, found, int(after))
        except BaseException:  # Redis failed, or the connection's task was cancelled
            self._discard(session)
            raise
        log.info("session %s resumed at seq %d, %d finals replayed", session.session_id,
                 session.last_seq, len(finals))  # fmt: skip
        greeting = session.resumed(len(finals))
        if found.closed:
            greeting["closed"] = True
        session.send(greeting)
        session.replay(finals)
        return session

    async def _bring_back(
        self, session: Session, request: web.Request, found: resume.Resumable, after: int
    ) -> list[Transcript]:
        """Restore a resumed session's state and register it; its stored finals after
        `after`, to be replayed."""
        session.last_seq, session.audio_s = await resume.last_accepted(
            self.redis, found.actor, found.session_id
        )
        session.acked_seq = session.last_seq
        session.delivered_seq = after
        if self.router.gone(session.actor):
            await self._move(session)
        session.begin_replay()
        await self.hub.add(session)
        self.sessions[session.session_id] = session
        session.opened_at = found.created_at or session.opened_at  # its clock goes on
        self._limit(session, request)
        finals = await resume.stored_finals(self.redis, session.session_id, after)
        await self.audit.log("session_resume", session.session_id, transcriber=session.actor,
                             last_seq=session.last_seq, replayed=len(finals),
                             peer=request.remote)  # fmt: skip
        return finals

    async def _serve(self, session: Session) -> None:
        async for msg in session.ws:
            try:
                if msg.type == WSMsgType.BINARY:
                    await self.on_audio(session, msg.data)
                elif msg.type == WSMsgType.TEXT:
                    if await self._on_text(session, msg.data):
                        return
                elif msg.type == WSMsgType.ERROR:
                    log.info("session %s: connection error: %s", session.session_id,
                             session.ws.exception())  # fmt: skip
                    return
            except ClientError as exc:
                session.client_error(exc.code)
                session.send(session.error_reply(exc))
                if exc.code in QUIET_CODES:  # counted in the metrics; a line each would
                    continue  # add to the load it reports, or let a client flood the log
                count, first = session.stats.error_kinds.get(exc.code, (0, exc.message))
                session.stats.error_kinds[exc.code] = (count + 1, first)
                if count == 0:  # the first of its kind in this session; the rest are counted
                    log.info("session %s: %s: %s", session.session_id, exc.code, exc.message)

    async def on_audio(self, session: Session, data: bytes) -> None:
        if not self.accepting:
            raise ClientError("shutting_down", "the gateway is shutting down; send this "
                              "again after you reconnect")  # fmt: skip
        if session.closing:
            raise ClientError("session_closing", "audio after close is ignored")
        if self.router.behind(session.actor, OVERLOAD_FACTOR):
            raise ClientError("overloaded", "the transcriber is far behind; this chunk was "
                              "not stored: send it again in a second")  # fmt: skip
        size = len(data)
        if size == 0:
            raise ClientError("empty_frame", "Audio data is empty")
        if size > self.settings.max_chunk_bytes:
            raise ClientError(
                "chunk_too_large",
                f"audio chunk of {size} bytes exceeds the limit of "
                f"{self.settings.max_chunk_bytes} bytes",
            )
        if session.lease is not None:
            try:
                self.limits.take(session.lease, size)
            except LimitExceeded as exc:
                raise ClientError("rate_limited", exc.message,
                                  retry_after=round(exc.retry_after, 2)) from None  # fmt: skip
        pcm, encoding, rate = data, session.fmt.encoding, session.fmt.sample_rate
        if encoding not in SAMPLE_WIDTHS:  # compressed or telephone audio: PCM goes on
            if session.decoder is None:
                session.decoder = decoder_for(encoding, rate)
            assert session.decoder is not None
            pcm = await session.decoder.decode(data)
            encoding, rate = "pcm_s16le", session.decoder.rate
        if len(session.storing) >= STORE_WINDOW:  # this client waits; the others do not
            await asyncio.wait([session.storing[0]])
        while session.lock.locked():  # the session is moving: its audio goes after the move
            async with session.lock:
                pass
        # From here to the submit nothing awaits, so no move can come between.
        seq, fmt = session.last_seq + 1, session.fmt
        chunk = AudioChunk(
            session_id=session.session_id, client_id=session.client_id, seq=seq, data=pcm,
            encoding=encoding, sample_rate=rate,
            received_at=time.time(), start_s=session.audio_s,
            end_silence=fmt.end_silence or 0.0, language=fmt.language or "",
            prompt=fmt.prompt, hotwords=fmt.hotwords, diarize=fmt.diarize,
        )  # fmt: skip
        # The chunk is queued for Redis, not awaited: the session reads its next frame at
        # once, so a client is not held to one chunk per round trip. Acks leave in order
        # as the stores are answered (see _stored).
        stored = self.coalescer.submit("XADD", keys.mailbox(session.actor), "*", "m",
                                       chunk.encode())  # fmt: skip
        session.last_seq = seq
        session.audio_s += chunk.seconds
        session.storing.append(stored)
        stored.add_done_callback(functools.partial(self._stored, session, seq, chunk.start_s,
                                                   size))  # fmt: skip

    def _stored(
        self, session: Session, seq: int, start_s: float, size: int, stored: Future[Any]
    ) -> None:
        """A chunk's store was answered: ack it, or refuse it and every later one queued.

        Stores finish in the order they were queued. When one fails, the later ones of
        the session still queued are cancelled (never sent), and the connection is
        closed (1013) after an `unavailable` that names the first chunk not stored: the
        frames the client sent meanwhile cannot be told from its resends, so it resumes
        the session and sends again from the resume's `last_seq` + 1. No chunk is stored
        under another's seq.
        """
        session.storing.pop(0)
        if _ok(stored):
            session.acked(seq, size)
            self.metrics.chunks += 1
            self.metrics.audio_bytes += size
            return
        if not stored.cancelled():
            for later in session.storing:
                later.cancel()
            # The seq goes back unless a later chunk was stored (an error of this command
            # alone, not of the connection): then the gap stays, and the acks say so.
            if seq <= session.last_seq and not any(_ok(f) for f in session.storing):
                log.warning("session %s: chunk %d not stored: %s", session.session_id, seq,
                            stored.exception())  # fmt: skip
                session.last_seq, session.audio_s = seq - 1, start_s
        if session.closing:
            return  # closed already (by this, or by the client): nothing more to say
        session.closing = True  # frames in flight are refused: the resume sorts them
        session.close_reason = "unavailable"
        session.client_error("unavailable")
        reply = error_reply("unavailable", f"audio from chunk {seq} could not be stored: "
                            "resume the session and send again from its last_seq + 1",
                            seq=seq)  # fmt: skip
        reply["last_seq"] = session.last_seq
        self._spawn(session.say_and_close(reply, WSCloseCode.TRY_AGAIN_LATER,
                                          b"audio not stored: resume the session"),
                    f"unavailable-{session.session_id}")  # fmt: skip

    async def _on_text(self, session: Session, text: str) -> bool:
        """Handle a control frame; True when the session is over."""
        msg = parse_control(text)
        kind = msg["type"]
        if kind == "start":
            if session.last_seq > 0:
                raise ClientError("bad_setting", "start must come before the first audio frame")
            await self.set_format(session, {k: v for k, v in msg.items() if k != "type"})
            session.send(session.greeting())
        elif kind == "finalize":
            await self.control(session, "finalize")
        elif kind == "close":
            if session.closing:  # an operator's end (or a slow client's) is under way,
                return False  # and that close sends the client what there is to send
            complete = await self.close_flushed(session)
            session.send(session.summary(complete))
            session.close_reason = "closed_by_client"
            return True
        # keepalive needs no reply: receiving it is all it is for.
        return False

    async def close_flushed(self, session: Session) -> bool:
        """Take no more audio, have the transcriber flush, and wait (bounded) for its
        finals. Whether they all came. A resume of the session from here on only reads
        what the client missed (see _finish_close)."""
        session.closing = True
        session.marking = marked = Event()
        try:
            await self.control(session, "close")
            await self.redis.hset(keys.session(session.session_id), "closed", "1")
        finally:
            marked.set()
        return await self._flushed(session)

    async def _flushed(self, session: Session) -> bool:
        """Wait for the transcriber's answer to the session's close, as long as it makes
        progress (Session.answered). When it does not come, the client's summary and an
        audit entry say which chunks have no final and why."""
        if await session.answered(session.close_flushed.is_set, CLOSE_FLUSH_GRACE_S):
            return True
        session.incomplete = (f"no answer from {session.actor} within "
                              f"{CLOSE_FLUSH_GRACE_S + session.owed_audio_s:.0f} s of its last "
                              "final")  # fmt: skip
        missing = session.missing()
        log.warning("session %s: close incomplete, no final for seqs %s: %s",
                    session.session_id, missing["missing_seqs"], missing["why"])  # fmt: skip
        seqs = "-".join(map(str, missing["missing_seqs"]))
        await self.audit.log("session_incomplete", session.session_id, missing_seqs=seqs,
                             why=missing["why"])  # fmt: skip
        return False

    async def _finish_close(self, session: Session) -> None:
        """The rest of a close for a closed session resumed: its stored finals are
        replayed already; while its close is still in the transcriber's mailbox (the
        connection dropped during the flush), the flush's finals are waited for as a
        close waits for them. Then the summary, and the connection closes (1000)."""
        session.close_reason = "closed_by_client"
        try:
            # Read again, not taken from _bring_back's read: only now is the session
            # subscribed, so a flush done before is in the replay and one after comes.
            if await resume.close_pending(self.redis, session.actor, session.session_id):
                complete = await self._flushed(session)
            else:
                complete = True  # flushed and committed: every final is in the replay
        except RedisError:
            complete, session.incomplete = False, "Redis did not answer"
        await session.say_and_close(session.summary(complete), WSCloseCode.OK, b"session closed")

    async def end_session(
        self, session_id: str, reason: str = "ended_by_operator"
    ) -> dict[str, Any] | None:
        """End a session (for an operator, or at its length limit): flush its audio, send
        the client what the summary of a close says, and close (1000, so clients do not
        resume). The summary, or None if this gateway has no such session."""
        session = self.sessions.get(session_id)
        if session is None:
            return None
        if session.closing:
            # On its way out already (its client's close, a closed session resumed, an
            # earlier end, a client too slow): a second close would send the client a
            # second summary. The answer is what the one under way came to.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.ended.wait(), CLOSING_S + session.owed_audio_s)
            return {**session.summary(session.covered), "reason": session.close_reason}
        session.close_reason = reason
        try:
            complete = await self.close_flushed(session)
        except (ClientError, RedisError):
            complete = False
        summary = {**session.summary(complete), "reason": reason}
        await session.say_and_close(session.ended_reply(summary), WSCloseCode.OK,
                                    reason.replace("_", " ").encode())  # fmt: skip
        log.info("session %s ended: %s", session_id, reason)
        return summary

    async def set_format(self, session: Session, params: dict[str, Any]) -> None:
        """Change the format of the audio to come, in the session and its record."""
        fmt = session.fmt.updated(params)
        self.check_language(fmt)
        session.fmt = fmt
        await self.redis.hset(keys.session(session.session_id),
                              mapping=_strings(session.fmt.public()))  # fmt: skip

    def check_language(self, fmt: AudioFormat) -> None:
        """ClientError `bad_setting` for a language code no transcriber's engine knows
        (as their heartbeats say): refused at once, not for each chunk sent."""
        known = self.router.languages()
        if fmt.language is not None and known is not None and fmt.language not in known:
            raise ClientError("bad_setting", unknown_language(fmt.language, known))

    async def finalized(self, session: Session) -> bool:
        """End the utterance in progress and wait (as a close does) for its final."""
        await self.control(session, "finalize")
        seq = session.last_seq
        return await session.answered(lambda: session.covered_seq >= seq, CLOSE_FLUSH_GRACE_S)

    async def control(self, session: Session, op: str) -> None:
        control = SessionControl(session.session_id, session.client_id, session.last_seq, op)
        if op == "close" and session.decoder is not None:
            try:
                control.data = await session.decoder.finish()
            except ClientError as exc:  # the stream was not one: the client hears it now
                session.client_error(exc.code)
                session.send(session.error_reply(exc))
        try:
            async with session.lock:
                await self.coalescer.execute("XADD", keys.mailbox(session.actor), "*", "m",
                                             control.encode())  # fmt: skip
        except RedisError:
            raise ClientError("unavailable", f"{op} could not be delivered; try again") from None

    async def end(self, session: Session) -> None:
        self._forget(session)
        if session.decoder is not None:
            session.decoder.close()
        with contextlib.suppress(ClientError):  # Redis is away; the actor's idle sweep cleans up
            await self.control(session, "end")
        await session.drain(grace=2.0)
        if not session.ws.closed:
            await session.close()
        s = session.stats
        for code, (count, first) in sorted(s.error_kinds.items()):
            # One entry per session and kind, however many came.
            await self.audit.log("client_error", session.session_id, code=code, count=count,
                                 first=first[:200])  # fmt: skip
        await self.audit.log("session_close", session.session_id, chunks=s.chunks, bytes=s.bytes,
                             finals=s.finals, errors=s.errors,
                             reason=session.close_reason)  # fmt: skip
        session.ended.set()
        log.info("session %s closed: %d chunks, %d finals", session.session_id, s.chunks, s.finals)

    # -- transcribers that stay down -------------------------------------------------

    def _catch_up_all(self) -> None:
        for session in list(self.sessions.values()):
            self._spawn(self._catch_up(session), f"catch-up-{session.session_id}")

    async def _catch_up(self, session: Session) -> None:
        """Send the finals stored while the Pub/Sub connection was down (lost to it)."""
        if session.replaying:  # a resume or an earlier catch-up reads them already
            return
        session.begin_replay()
        finals: list[Transcript] = []
        try:
            finals = await resume.stored_finals(self.redis, session.session_id,
                                                session.delivered_seq)  # fmt: skip
        except RedisError:
            log.warning("session %s: finals missed while Pub/Sub was down not read back",
                        session.session_id, exc_info=True)  # fmt: skip
        finally:
            session.replay(finals)
        if finals:
            log.info("session %s: %d finals sent from the results stream after a Pub/Sub "
                     "reconnect", session.session_id, len(finals))  # fmt: skip

    def _on_control(self, msg: Message) -> None:
        if isinstance(msg, ActorDown):
            self.router.mark_down(msg.name)

    def _actor_down(self, name: str) -> None:
        for session in [s for s in self.sessions.values() if s.actor == name]:
            self._spawn(self._move_live(session), f"move-{session.session_id}")

    def _spawn(self, job: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run `job` beside the sessions; `stop()` cancels what is still running."""
        task = asyncio.create_task(job, name=name)
        self._jobs.add(task)
        task.add_done_callback(self._job_done)
        return task

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def _move_live(self, session: Session) -> None:
        try:
            await self._move(session)
        except ClientError as exc:  # nowhere to go: the client may resume later
            await session.say_and_close(exc.reply(), WSCloseCode.TRY_AGAIN_LATER,
                                        b"no transcriber")  # fmt: skip

    async def _move(self, session: Session) -> None:
        """Give the session to a live transcriber, with its audio not yet transcribed."""
        async with session.lock:
            await session.stored()  # the chunks queued for the old mailbox are in it
            old = session.actor
            new = await self.router.pick()
            if new is None:
                raise ClientError("no_transcriber", f"{old} is down and no transcriber is "
                                  "running; resume this session later")  # fmt: skip
            moved = await resume.move_entries(self.redis, old, new, session.session_id)
            session.actor = new
            self.router.release(old)
            await self.redis.hset(keys.session(session.session_id), "actor", new)
        log.warning("session %s moved from %s to %s with %d entries", session.session_id,
                    old, new, moved)  # fmt: skip
        await self.audit.log("session_moved", session.session_id, source=old, target=new,
                             entries=moved)  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """This gateway now and since it started (`/stats`)."""
        return {
            "gateway": self.name,
            "accepting": self.accepting,
            "uptime_s": round(time.time() - self.runtime.started_at, 3),
            "sessions": len(self.sessions),
            "store_lag_ms": round(self.coalescer.lag_s() * 1000, 1),
            **self.metrics.totals(),
            "live_transcribers": sorted(self.router.live),
            "draining_transcribers": sorted(self.router.draining & set(self.router.live)),
            "subscriptions": self.hub.channels,
        }


def _ok(fut: Future[Any]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _strings(values: dict[str, Any]) -> Mapping[Any, str]:
    """Hash field values as Redis stores them (booleans as 0/1)."""
    return {k: str(int(v) if isinstance(v, bool) else v) for k, v in values.items()}


async def refuse(ws: web.WebSocketResponse, reply: dict[str, Any], code: int) -> web.StreamResponse:
    await ws.send_json(reply)
    await ws.close(code=code, message=reply["error"].encode()[:120])
    return ws
