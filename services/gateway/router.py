"""Which transcribers are alive, and which one a new session is given to."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

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

    def __init__(
        self,
        redis: Redis,
        interval: float,
        misses: int,
        on_down: Callable[[str], None] | None = None,
        max_lag: float = float("inf"),
        max_busy: float = 1.0,
    ) -> None:
        self._redis = redis
        self._max_busy = max_busy
        self._interval = interval
        self._max_lag_ms = max_lag * 1000
        # A transcriber is gone once nobody has seen its heartbeat for this long (its
        # key's TTL). "Missing right now" is not enough: after a Redis restart every key
        # is missing until the actors beat again.
        self._silence_limit = interval * (misses + 1)
        self._last_seen: dict[str, float] = {}
        self._on_down = on_down
        self.live: dict[str, Heartbeat] = {}
        # Actors known to be gone, with when: a heartbeat counts again only if its actor
        # started after that (a new incarnation), not one left over from before.
        self.down: dict[str, float] = {}
        self.present: set[str] = set()  # transcribers with a heartbeat, in any state
        self.draining: set[str] = set()  # live, but given no new sessions
        self.assigned: Counter[str] = Counter()
        # When this gateway's sessions on each transcriber last ended (wall clock, as a
        # beat's `ts`): a beat sent before an end still counts that session.
        self._ended: dict[str, list[float]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._loop(), name="router-refresh")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def refresh(self) -> None:
        began = time.monotonic()
        pipe = self._redis.pipeline(transaction=False)
        pipe.smembers(keys.ACTORS)
        pipe.smembers(keys.DRAINING)
        members, draining = await pipe.execute()
        names = sorted(n.decode() for n in members if isinstance(n, bytes))
        self.draining = {n.decode() for n in draining if isinstance(n, bytes)}
        live: dict[str, Heartbeat] = {}
        present: set[str] = set()
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
                if beat.role != "transcriber":
                    continue
                present.add(name)
                self._last_seen[name] = time.monotonic()
                if beat.state != "running":  # starting: recovering its mailbox
                    continue
                if name in self.down:
                    if beat.started_at <= self.down[name]:
                        continue
                    del self.down[name]
                live[name] = beat
        now = time.monotonic()
        if now - began > self._interval:
            # Redis answered late (paused, overloaded): the transcribers' beats waited as
            # long, so nobody's silence counts; their clocks start over.
            self._last_seen = dict.fromkeys(self._last_seen, now)
        silent = {n for n, seen in self._last_seen.items() if now - seen > self._silence_limit}
        self.live = live
        self.present = present
        for name in sorted(silent):
            del self._last_seen[name]
            self.mark_down(name)

    def mark_down(self, name: str) -> None:
        """`name` is gone: route nothing to it and move its sessions (once)."""
        self.live.pop(name, None)
        if name in self.down:
            return
        self.down[name] = time.time()
        log.warning("transcriber %s is down; moving its sessions", name)
        if self._on_down is not None:
            self._on_down(name)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                # A Redis that does not answer is as unreachable as one that refuses.
                await asyncio.wait_for(self.refresh(), 2 * self._interval)
            except (RedisError, TimeoutError) as exc:
                # Nobody's silence counts while we cannot look: start their clocks over.
                log.warning("could not read heartbeats: %s", exc)
                now = time.monotonic()
                self._last_seen = dict.fromkeys(self._last_seen, now)

    def behind(self, actor: str, factor: float = 1.0) -> bool:
        """Whether `actor` last said it reads its mailbox more than `factor` times the
        allowed lag late. Known at heartbeat pace (a second or so), which bounds the
        overshoot."""
        beat = self.live.get(actor)
        return beat is not None and beat.lag_ms > factor * self._max_lag_ms

    def full(self, actor: str) -> bool:
        """Whether one more real-time session would take `actor`'s engine past
        HARK_MAX_BUSY of its time, each of its sessions priced at what a second of audio
        has cost its engine lately (learnt from what it does, not a count). Before it
        knows that (a fresh transcriber), at its busy share per session."""
        beat = self.live.get(actor)
        # Sessions given to it since its beat cost it nothing yet: count them too; those
        # that ended here since its beat are gone (a client's next session right after
        # its last was refused for up to a beat, by a busy share that session left).
        if beat is not None:
            ended = [t for t in self._ended.get(actor, ()) if t > beat.ts]
            self._ended[actor] = ended
            sessions = max(beat.load - len(ended), self.assigned[actor])
        else:
            sessions = 0
        if beat is None or sessions == 0:
            # An idle engine takes a session whatever it costs: its busy share is the
            # tail of those gone (a burst's finals, decoding still).
            return False
        if beat.cost > 0:
            per_session = beat.cost
        elif beat.load > 0:
            per_session = beat.busy / beat.load
        else:
            return False
        return per_session * (sessions + 1) > self._max_busy

    def languages(self) -> list[str] | None:
        """The language codes the live transcribers' engines know, or None where one
        takes any (or says nothing, as an older one), or none is live to ask."""
        known: dict[str, None] = {}  # in the engines' order (whisper's: most spoken first)
        for beat in self.live.values():
            if not beat.languages:
                return None
            known.update(dict.fromkeys(beat.languages))
        return list(known) or None

    def saturated(self) -> bool:
        """Every live transcriber is behind, or has no room for another speaker: a new
        session would only add to the queue and slow those already there."""
        return bool(self.live) and all(self.behind(name) or self.full(name) for name in self.live)

    async def pick(self) -> str | None:
        """The live transcriber with the fewest sessions from this gateway, or None.

        One that is behind only when all are; a draining one only when no other is
        live: a session is better slow than refused.
        """
        if not self.live:
            await self.refresh()  # one may have come up since the last beat
        if not self.live:
            return None
        open_ = [name for name in self.live if name not in self.draining] or list(self.live)
        open_ = [name for name in open_ if not (self.behind(name) or self.full(name))] or open_
        actor = min(open_, key=lambda name: (self.assigned[name], name))
        self.assigned[actor] += 1
        return actor

    def gone(self, actor: str) -> bool:
        """Whether `actor` is down or has no heartbeat at all (not merely restarting)."""
        return actor in self.down or actor not in self.present

    def claim(self, actor: str) -> None:
        """Count a session that comes back to `actor` (a resume)."""
        self.assigned[actor] += 1

    def release(self, actor: str) -> None:
        self._ended.setdefault(actor, []).append(time.time())
        self.assigned[actor] -= 1
        if self.assigned[actor] <= 0:
            del self.assigned[actor]
