"""Which transcribers are alive, and which one a new session is given to."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.messages import Heartbeat, MessageError, decode_as
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Router:
    """Reads the transcribers' heartbeats and spreads sessions over the live ones.

    A transcriber is live while its heartbeat key exists (it has a TTL of a few
    beats). A session stays with the transcriber it was given for its whole life,
    since that actor holds its recognition state.
    """

    def __init__(self, redis: Redis, interval: float) -> None:
        self._redis = redis
        self._interval = interval
        self.live: dict[str, Heartbeat] = {}
        self.assigned: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="router-refresh")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def refresh(self) -> None:
        members = await self._redis.smembers(keys.ACTORS)
        names = sorted(n.decode() for n in members if isinstance(n, bytes))
        live: dict[str, Heartbeat] = {}
        if names:
            values = await self._redis.mget([keys.actor(n) for n in names])
            for name, value in zip(names, values, strict=True):
                if not isinstance(value, bytes):
                    continue
                try:
                    beat = decode_as(Heartbeat, value)
                except MessageError:
                    log.warning("bad heartbeat for %s", name)
                    continue
                if beat.role == "transcriber" and beat.state == "running":
                    live[name] = beat
        self.live = live

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.refresh()
            except RedisError:
                log.warning("could not read heartbeats", exc_info=True)

    async def pick(self) -> str | None:
        """The live transcriber with the fewest sessions from this gateway, or None."""
        if not self.live:
            await self.refresh()  # one may have come up since the last beat
        if not self.live:
            return None
        actor = min(self.live, key=lambda name: (self.assigned[name], name))
        self.assigned[actor] += 1
        return actor

    def claim(self, actor: str) -> None:
        """Count a session that comes back to `actor` (a resume)."""
        self.assigned[actor] += 1

    def release(self, actor: str) -> None:
        self.assigned[actor] -= 1
        if self.assigned[actor] <= 0:
            del self.assigned[actor]
