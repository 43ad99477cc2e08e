"""What every actor process shares: heartbeat, readiness notice, entry-point plumbing."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any

from redis.asyncio import Redis

from shared import keys
from shared.config import Settings
from shared.messages import Heartbeat
from shared.redis_util import Command

log = logging.getLogger(__name__)

VERSION = "0.1.0"
NOTIFY_FD_ENV = "HARK_NOTIFY_FD"
# "stdout": say READY_LINE on standard output instead (a container has no pipe to us).
NOTIFY_ENV = "HARK_NOTIFY"
READY_LINE = "HARK-ACTOR-READY"
INSTANCE_ENV = "HARK_INSTANCE"
# The cyclic garbage collector's thresholds in an actor. Python's (700, 10, 10) has a
# busy gateway collect every millisecond or two, each time moving what is in flight (a
# chunk's future, its message) to an older generation, until a full collection stops
# the event loop for up to 80 ms at a thousand sessions (bench/RESULTS.md). What dies
# young is freed by its reference count anyway; cycles are still collected, later.
GC_THRESHOLDS = (50_000, 20, 10)


class ActorRuntime:
    """An actor's identity and liveness signals.

    The heartbeat is a key with a TTL of (misses + 1) beats, written from inside
    the actor's own loop, so a stuck loop shows as an ageing or missing key.
    """

    def __init__(self, settings: Settings, redis: Redis, name: str, role: str) -> None:
        self.settings = settings
        self.redis = redis
        self.name = name
        self.role = role
        self.started_at = time.time()
        self.instance = os.environ.get(INSTANCE_ENV, "")
        self._last_beat = 0.0
        self.languages: list[str] = []  # what its heartbeat says (see Heartbeat)
        self._ttl_ms = int(settings.heartbeat_interval * (settings.heartbeat_misses + 1) * 1000)

    def heartbeat(
        self, state: str, load: int, lag_ms: int = 0, busy: float = 0.0, cost: float = 0.0,
        hurried: float = 0.0,
    ) -> list[Command]:  # fmt: skip
        """The commands of a heartbeat, for a caller that sends them with its own."""
        self._last_beat = time.monotonic()
        beat = Heartbeat(
            name=self.name, pid=os.getpid(), role=self.role, state=state, load=load,
            version=VERSION, ts=time.time(), started_at=self.started_at, instance=self.instance,
            lag_ms=lag_ms, busy=busy, cost=cost, hurried=hurried, languages=self.languages,
        )  # fmt: skip
        return [
            ("SET", keys.actor(self.name), beat.encode(), "PX", self._ttl_ms),
            ("SADD", keys.ACTORS, self.name),  # again each beat: Redis may have lost it
        ]

    def beat_due(self) -> bool:
        # Twice per interval, so one late beat is never read as a miss.
        return time.monotonic() - self._last_beat >= self.settings.heartbeat_interval / 2

    async def beat(
        self, state: str, load: int, lag_ms: int = 0, busy: float = 0.0, cost: float = 0.0
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for command in self.heartbeat(state, load, lag_ms, busy, cost):
            pipe.execute_command(*command)
        await pipe.execute()

    async def register(self) -> None:
        await self.redis.sadd(keys.ACTORS, self.name)

    async def clear(self) -> None:
        """Remove the heartbeat at a clean stop, so nobody routes to a stopped actor."""
        with contextlib.suppress(Exception):
            await self.redis.delete(keys.actor(self.name))


def notify_ready() -> None:
    """Tell the supervisor that this actor is up: a line on a pipe (process backend) or
    on standard output (docker backend, which follows the container's log)."""
    if os.environ.get(NOTIFY_ENV) == "stdout":
        print(READY_LINE, flush=True)
        return
    fd = os.environ.pop(NOTIFY_FD_ENV, None)
    if fd is None:
        return
    try:
        os.write(int(fd), b"READY\n")
        os.close(int(fd))
    except OSError:
        log.warning("could not notify the supervisor on fd %s", fd)


def run(main: Callable[[asyncio.Event], Coroutine[Any, Any, int | None]], grace: float) -> int:
    """Run an actor's `main(stop)` on uvloop where available; SIGTERM/SIGINT set `stop`.

    The handlers only record the signal; `main` decides how to wind down, within
    `grace` seconds of the signal. Past that the process exits regardless: a
    shutdown that waits on an unreachable Redis must not keep an orphan alive.
    Returns what `main` returns (None counts as 0), for the process exit code.
    """

    # What is loaded by now (modules, settings, a model) lives as long as the process:
    # no collection need look at it again.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

    async def runner() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        work = asyncio.create_task(main(stop), name="main")
        signalled = asyncio.create_task(stop.wait(), name="stop-signal")
        await asyncio.wait([work, signalled], return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            done, _ = await asyncio.wait([work], timeout=grace)
            if not done:
                log.error("did not stop within %.1f s of the signal; exiting now", grace)
                logging.shutdown()
                os._exit(1)
        signalled.cancel()
        return await work or 0

    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(runner())
    code: int = uvloop.run(runner())
    return code
