"""The supervisor's heartbeat monitor: finds hung actors, and reads load and mailbox lag.

An actor writes its heartbeat from inside its own loop; one that misses
`heartbeat_misses` beats is reported HUNG, terminated and restarted. Each round
also reads what the status report shows besides states: the sessions each actor
holds (from its heartbeat) and each transcriber's mailbox backlog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from services.supervisor.child import Child, State
from shared import keys
from shared.messages import Heartbeat, MessageError, decode_as
from shared.tasks import log_failure

if TYPE_CHECKING:
    from services.supervisor.supervisor import Supervisor

log = logging.getLogger(__name__)


async def watch_heartbeats(supervisor: Supervisor) -> None:
    """Forever, every half interval: one round of `check`."""
    while True:
        await asyncio.sleep(supervisor.settings.heartbeat_interval / 2)
        await check(supervisor)


async def check(supervisor: Supervisor) -> None:
    settings = supervisor.settings
    limit = settings.heartbeat_interval * settings.heartbeat_misses
    # Read anew each round: scaling adds and removes children.
    actors = [c for c in supervisor.children.values() if c.spec.notify]
    transcribers = [c for c in actors if c.spec.role == "transcriber"]
    assert supervisor.redis is not None
    began = time.monotonic()
    try:
        pipe = supervisor.redis.pipeline(transaction=False)
        pipe.mget([keys.actor(c.name) for c in actors])
        for child in transcribers:
            pipe.xlen(keys.mailbox(child.name))
        pipe.smembers(keys.DRAINING)
        # A Redis that does not answer (paused, wedged) is as unreachable as one that
        # refuses: a read that blocked would later make every beat look old.
        replies: list[Any] = await asyncio.wait_for(pipe.execute(), settings.heartbeat_interval)
    except (RedisError, TimeoutError):
        if supervisor.redis_ok:
            log.warning("Redis unreachable: tree DEGRADED")
            supervisor.record("redis_unreachable")
        supervisor.redis_ok = False
        return
    values, lags, draining = replies[0], replies[1:-1], replies[-1]
    mono = time.monotonic()
    if not supervisor.redis_ok or mono - began > settings.heartbeat_interval / 2:
        # Nobody could beat while Redis was away, or answered late (the actors' beats
        # waited as long): every silence starts over now, not counted against them.
        for child in actors:
            child.last_beat = mono
    if not supervisor.redis_ok:
        log.info("Redis reachable again")
        supervisor.redis_ok = True
        supervisor.record("redis_reachable")
    for child, lag in zip(transcribers, lags, strict=True):
        child.mailbox = lag if isinstance(lag, int) else None
    names = {n.decode() for n in draining if isinstance(n, bytes)}
    now = time.time()
    for child, value in zip(actors, values, strict=True):
        child.draining = child.name in names
        beat = _heartbeat(value)
        if beat is not None and beat.instance == child.instance:
            child.last_beat = max(child.last_beat or 0.0, mono - max(0.0, now - beat.ts))
            child.load = beat.load
            transcriber = child.spec.role == "transcriber"
            child.lag_ms = beat.lag_ms if transcriber else None
            child.busy = beat.busy if transcriber else None
            child.cost = beat.cost if transcriber else None
            child.hurried = beat.hurried if transcriber else None
        # Silence is measured from the last beat seen, not from "missing right
        # now": after a Redis restart every key is missing until the next beat.
        if child.last_beat is None:
            child.heartbeat_age = None
            continue
        child.heartbeat_age = round(mono - child.last_beat, 3)
        if child.state == State.RUNNING and child.heartbeat_age > limit:
            _hung(supervisor, child)


def _hung(supervisor: Supervisor, child: Child) -> None:
    child.state = State.HUNG
    log.error("%s (pid %s) missed %d heartbeats: HUNG, restarting it",
              child.name, child.pid, supervisor.settings.heartbeat_misses)  # fmt: skip
    supervisor.record("actor_hung", child=child.name, pid=child.pid)
    task = asyncio.create_task(supervisor.terminate(child), name=f"kill-{child.name}")
    task.add_done_callback(log_failure)


def _heartbeat(value: bytes | str | None) -> Heartbeat | None:
    if not isinstance(value, bytes):
        return None
    try:
        return decode_as(Heartbeat, value)
    except MessageError:
        return None
