"""One Pub/Sub connection per gateway process, routing each result to its session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.session import Session
from shared import keys
from shared.messages import Message, MessageError, decode
from shared.redis_util import RawConnection
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 5.0
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 2.0
CONTROL_CHANNEL = keys.CONTROL.encode()


class Hub:
    """Subscribes `transcripts:<client_id>` for each session and dispatches what arrives.

    `add()` returns only once Redis has confirmed the subscription, so no result
    published after the client's first chunk can be missed. The connection is driven
    by hand (a `RawConnection`: every message a socket read completes is dispatched at
    once), not by redis-py's PubSub, whose reads cost ~19 µs a message. When it is lost
    the hub connects again and subscribes the channels its sessions hold, then calls
    `on_reconnect`: what was published meanwhile is lost to Pub/Sub (finals are in the
    results stream).
    """

    def __init__(
        self,
        redis: Redis,
        on_control: Callable[[Message], None],
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self._link = RawConnection(redis)
        self._on_control = on_control
        self._on_reconnect = on_reconnect
        self._lost = False  # connected again after a loss, on_reconnect not yet called
        self._last_resubscribed = CONTROL_CHANNEL  # its confirmation: all are subscribed
        self._sessions: dict[bytes, Session] = {}
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None
        # Channels of ended sessions, unsubscribed together: thousands of sessions
        # closing at once cost a few UNSUBSCRIBE commands, not one round trip each.
        self._leaving: set[bytes] = set()
        self._unsubscriber: asyncio.Task[None] | None = None
        self._unconfirmed: set[bytes] = set()  # UNSUBSCRIBE sent, Redis not answered yet
        self._settled = asyncio.Event()  # set while nothing is leaving or unconfirmed
        self._settled.set()

    @property
    def channels(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._listen(), name="hub-listen")

    async def _connect(self) -> None:
        """Connect and subscribe the control channel and every session's channel."""
        await self._link.connect()
        # From here to the write nothing yields: a session added meanwhile is either in
        # this SUBSCRIBE or sends its own.
        channels = [CONTROL_CHANNEL, *self._sessions]
        self._last_resubscribed = channels[-1]
        self._link.write([("SUBSCRIBE", *channels)])
        await self._link.drain()

    async def stop(self) -> None:
        await cancel_and_wait(self._unsubscriber)
        await cancel_and_wait(self._task)
        await self._link.close()

    async def add(self, session: Session) -> None:
        channel = keys.transcripts(session.client_id).encode()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sessions[channel] = session
        self._confirm[channel] = fut
        self._leaving.discard(channel)  # a resumed session before its old one's UNSUBSCRIBE
        try:
            # Not connected, or the write fails: the reconnection subscribes it.
            if self._link.connected:
                with contextlib.suppress(RedisError):
                    self._link.write([("SUBSCRIBE", channel)])
                    await self._link.drain()
            await asyncio.wait_for(fut, SUBSCRIBE_TIMEOUT_S)
        except BaseException:
            # Timed out, or the connection's task was cancelled: the SUBSCRIBE may have
            # gone out all the same, so the channel is left again.
            if self._sessions.get(channel) is session:
                del self._sessions[channel]
                self._leave({channel})
            self._confirm.pop(channel, None)
            raise

    def remove(self, session: Session) -> None:
        """Stop routing to `session`; its channel is unsubscribed with others soon after."""
        channel = keys.transcripts(session.client_id).encode()
        # A resumed session may have taken the channel over already: leave it alone.
        if self._sessions.get(channel) is session:
            del self._sessions[channel]
            self._leave({channel})

    async def settled(self) -> None:
        """Until Redis has confirmed every UNSUBSCRIBE of the sessions removed so far."""
        await self._settled.wait()

    def _leave(self, channels: set[bytes]) -> None:
        self._leaving |= channels
        self._settled.clear()
        if self._unsubscriber is None:
            self._unsubscriber = asyncio.create_task(self._unsubscribe(), name="hub-leave")

    async def _unsubscribe(self) -> None:
        try:
            while self._leaving:
                channels, self._leaving = list(self._leaving), set()
                if not self._link.connected:
                    continue  # the next connection subscribes only the sessions' channels
                self._unconfirmed.update(channels)
                try:
                    self._link.write([("UNSUBSCRIBE", *channels)])
                    await self._link.drain()
                except RedisError:  # the listener connects again (without these)
                    log.warning("unsubscribe of %d channels failed", len(channels))
        finally:
            self._unsubscriber = None
            self._settle()  # all answered while it sent

    def _settle(self) -> None:
        if not self._leaving and not self._unconfirmed and self._unsubscriber is None:
            self._settled.set()

    async def _listen(self) -> None:
        while True:
            try:
                while True:
                    for reply in await self._link.replies():
                        self._dispatch(reply)
            except RedisError as exc:
                log.warning("pub/sub connection lost (%s); reconnecting", exc)
            await self._link.close()
            # The new connection holds none of the old one's UNSUBSCRIBEs, answered or not.
            self._unconfirmed.clear()
            self._settle()
            self._lost = True
            delay = RECONNECT_MIN_S
            while True:
                await asyncio.sleep(delay)  # backoff while Redis is away
                try:
                    await self._connect()
                    break
                except RedisError as exc:
                    await self._link.close()
                    log.warning("pub/sub reconnect failed (%s); again in %.1f s", exc, delay)
                    delay = min(2 * delay, RECONNECT_MAX_S)

    def _dispatch(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            log.warning("unexpected reply on the pub/sub connection: %r", reply)
            return
        kind, channel, data = reply[0], reply[1], reply[2]
        if kind == b"subscribe":
            fut = self._confirm.pop(channel, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            if self._lost and channel == self._last_resubscribed:
                # Every channel is subscribed again: from here on nothing published is
                # missed, and what was published while down is read back from the store.
                self._lost = False
                log.info("pub/sub connection back; %d channels subscribed", len(self._sessions))
                self._on_reconnect()
            return
        if kind == b"unsubscribe":
            self._unconfirmed.discard(channel)
            self._settle()
            return
        if kind != b"message":
            return
        if channel == CONTROL_CHANNEL:
            try:
                self._on_control(decode(data))
            except MessageError as exc:
                log.warning("bad message on %s: %s", keys.CONTROL, exc)
            return
        session = self._sessions.get(channel)
        if session is None:
            return
        try:
            decoded = decode(data)
        except MessageError as exc:
            log.warning("session %s: bad message on %s: %s", session.session_id, channel, exc)
            return
        session.on_message(decoded)
