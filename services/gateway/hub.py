"""One Pub/Sub connection per gateway process, routing each result to its session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.session import Session
from shared import keys
from shared.messages import Message, MessageError, decode
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 5.0
CONTROL_CHANNEL = keys.CONTROL.encode()


class Hub:
    """Subscribes `transcripts:<client_id>` for each session and dispatches what arrives.

    `add()` returns only once Redis has confirmed the subscription, so no result
    published after the client's first chunk can be missed.
    """

    def __init__(
        self,
        redis: Redis,
        on_control: Callable[[Message], None],
        on_reconnect: Callable[[], None] = lambda: None,
    ) -> None:
        self._pubsub = redis.pubsub()
        self._on_control = on_control
        # Called once the connection is back after a loss, its channels subscribed again:
        # what was published meanwhile is lost to Pub/Sub (finals are in the results stream).
        self._on_reconnect = on_reconnect
        self._lost = False
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
        # Always subscribed to something, so the reader has a connection to read from.
        await self._pubsub.subscribe(keys.CONTROL)
        # redis-py reconnects a lost Pub/Sub connection inside its reads and subscribes
        # again without telling; this callback of the connection's is how the hub knows.
        assert self._pubsub.connection is not None
        self._pubsub.connection.register_connect_callback(self._reconnected)
        self._task = asyncio.create_task(self._listen(), name="hub-listen")

    def _reconnected(self, connection: object) -> None:
        self._lost = True

    async def stop(self) -> None:
        if self._pubsub.connection is not None:
            self._pubsub.connection.deregister_connect_callback(self._reconnected)
        await cancel_and_wait(self._unsubscriber)
        await cancel_and_wait(self._task)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def add(self, session: Session) -> None:
        channel = keys.transcripts(session.client_id).encode()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sessions[channel] = session
        self._confirm[channel] = fut
        self._leaving.discard(channel)  # a resumed session before its old one's UNSUBSCRIBE
        try:
            await self._pubsub.subscribe(channel)
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
                self._unconfirmed.update(channels)
                try:
                    await self._pubsub.unsubscribe(*channels)
                except RedisError:
                    # Sent again once the connection is back (see _listen).
                    log.warning("unsubscribe of %d channels failed", len(channels), exc_info=True)
        finally:
            self._unsubscriber = None
            self._settle()  # all answered while it sent

    def _settle(self) -> None:
        if not self._leaving and not self._unconfirmed and self._unsubscriber is None:
            self._settled.set()

    async def _listen(self) -> None:
        while True:
            try:
                msg = await self._pubsub.get_message(timeout=None)
            except (RedisError, OSError, RuntimeError) as exc:
                # redis-py reconnects and re-subscribes on the next read. (A reconnect that
                # writes on a transport closed meanwhile raises RuntimeError from the event
                # loop, not a RedisError: the hub must outlive that too, or every session of
                # this gateway stops getting results.)
                log.warning("pub/sub connection lost (%s); reconnecting", exc, exc_info=True)
                self._lost = True
                if not isinstance(exc, RedisError) and self._pubsub.connection is not None:
                    await self._pubsub.connection.disconnect()
                await asyncio.sleep(0.2)
                continue
            if msg is None:
                continue
            if self._lost:
                # The first reply on the new connection answers the SUBSCRIBE redis-py sent
                # for every channel at once (before our callback ran): from here on
                # nothing published is missed.
                self._lost = False
                log.info("pub/sub connection back; %d channels subscribed", len(self._sessions))
                # redis-py subscribed again to the channels whose UNSUBSCRIBE had no
                # answer (and none will come): those no session holds again are left anew.
                stale, self._unconfirmed = self._unconfirmed, set()
                if stale - self._sessions.keys():
                    self._leave(stale - self._sessions.keys())
                self._settle()
                self._on_reconnect()
            self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind, channel = msg["type"], msg["channel"]
        if kind == "subscribe":
            fut = self._confirm.pop(channel, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if kind == "unsubscribe":
            self._unconfirmed.discard(channel)
            self._settle()
            return
        if kind != "message":
            return
        if channel == CONTROL_CHANNEL:
            try:
                self._on_control(decode(msg["data"]))
            except MessageError as exc:
                log.warning("bad message on %s: %s", keys.CONTROL, exc)
            return
        session = self._sessions.get(channel)
        if session is None:
            return
        try:
            decoded = decode(msg["data"])
        except MessageError as exc:
            log.warning("session %s: bad message on %s: %s", session.session_id, channel, exc)
            return
        session.on_message(decoded)
