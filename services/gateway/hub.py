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

    def __init__(self, redis: Redis, on_control: Callable[[Message], None]) -> None:
        self._pubsub = redis.pubsub()
        self._on_control = on_control
        self._sessions: dict[bytes, Session] = {}
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def channels(self) -> int:
        return len(self._sessions)

    async def start(self) -> None:
        # Always subscribed to something, so the reader has a connection to read from.
        await self._pubsub.subscribe(keys.CONTROL)
        self._task = asyncio.create_task(self._listen(), name="hub-listen")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def add(self, session: Session) -> None:
        channel = keys.transcripts(session.client_id).encode()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sessions[channel] = session
        self._confirm[channel] = fut
        try:
            await self._pubsub.subscribe(channel)
            await asyncio.wait_for(fut, SUBSCRIBE_TIMEOUT_S)
        except BaseException:
            self._sessions.pop(channel, None)
            self._confirm.pop(channel, None)
            raise

    async def remove(self, session: Session) -> None:
        channel = keys.transcripts(session.client_id).encode()
        # A resumed session may have taken the channel over already: leave it alone.
        if self._sessions.get(channel) is session:
            del self._sessions[channel]
            try:
                await self._pubsub.unsubscribe(channel)
            except RedisError:
                log.warning("unsubscribe %s failed", channel, exc_info=True)

    async def _listen(self) -> None:
        while True:
            try:
                msg = await self._pubsub.get_message(timeout=None)
            except RedisError:
                # redis-py reconnects and re-subscribes on the next read.
                log.warning("pub/sub connection lost; reconnecting", exc_info=True)
                await asyncio.sleep(0.2)
                continue
            if msg is not None:
                self._dispatch(msg)

    def _dispatch(self, msg: dict[str, Any]) -> None:
        kind, channel = msg["type"], msg["channel"]
        if kind == "subscribe":
            fut = self._confirm.pop(channel, None)
            if fut is not None and not fut.done():
                fut.set_result(None)
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
