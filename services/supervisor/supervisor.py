"""The supervisor: starts the tree, restarts what crashes or hangs, reports health.

Each child has a runner task that awaits the child's exit, so a crash is seen the
moment it happens. Hangs are seen by the heartbeat monitor: an actor writes its
heartbeat from inside its own loop, and one that misses `heartbeat_misses` beats
is reported HUNG, terminated and restarted.

Restarts follow Erlang/OTP: restart types, an intensity window (more than
`restart_intensity` restarts within `restart_period` seconds makes the child FATAL,
reported and left down), and jittered exponential backoff between consecutive
restarts: the first restart after a healthy run is immediate, the next waits
`backoff_min`, then twice that, up to `backoff_max`; a child that stays up for
BACKOFF_RESET_S starts over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.supervisor.backends import Backend, Handle
from services.supervisor.child import Child, ChildSpec, Restart, State, describe_exit
from services.supervisor.monitor import watch_heartbeats
from shared import keys
from shared.audit import Audit
from shared.config import Settings
from shared.messages import ActorDown
from shared.redis_util import connect
from shared.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BACKOFF_RESET_S = 60.0
STARTUP_TIMEOUT_S = 60.0
START_ORDER = ("redis", "transcriber", "gateway")
MAX_TRANSCRIBERS = 64


class StartupError(RuntimeError):
    """The tree could not be brought up; the message says which child and why."""


class OperationError(RuntimeError):
    """An operation (restart, drain, scale) that cannot be done now; the message says why."""


class UnknownActor(KeyError):
    """No actor of that name in the tree."""


class Supervisor:
    """`Supervisor(settings, backend, specs, redis_url)`; `start()`, `status()`, `stop()`."""

    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        specs: list[ChildSpec],
        redis_url: str,
        new_transcriber: Callable[[str], ChildSpec] | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.redis_url = redis_url
        self.new_transcriber = new_transcriber  # the spec of a transcriber scaling adds
        self.children: dict[str, Child] = {s.name: Child(s) for s in specs}
        self.redis: Redis | None = None
        self.audit: Audit | None = None
        self.redis_ok = False
        self.started_at = time.monotonic()
        self._handles: dict[str, Handle] = {}
        self._exited: dict[str, asyncio.Event] = {}
        self._died_at: dict[str, float] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._started = False
        self._audit_queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._audit_writer: asyncio.Task[None] | None = None
        self._rng = random.Random()
        self._scaling = asyncio.Lock()

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the children in order (redis, transcribers, gateway), each group ready first."""
        for role in START_ORDER:
            group = [c for c in self.children.values() if c.spec.role == role]
            for child in group:
                self._launch(child)
            await self._await_ready(group)
            if role == "redis" or (self.redis is None and role == START_ORDER[1]):
                await self._connect()
        self._monitor = asyncio.create_task(watch_heartbeats(self), name="heartbeats")
        self._started = True
        self.record("supervisor_start", children=len(self.children))

    def _launch(self, child: Child) -> None:
        self._exited[child.name] = asyncio.Event()
        self._runners[child.name] = asyncio.create_task(self._run(child), name=f"run-{child.name}")

    async def _await_ready(self, group: list[Child]) -> None:
        async def ready(child: Child) -> None:
            while not child.ready.is_set():
                waiter = asyncio.create_task(child.ready.wait())
                done, _ = await asyncio.wait(
                    [waiter, self._runners[child.name]], return_when=asyncio.FIRST_COMPLETED
                )
                if waiter not in done:
                    waiter.cancel()
                    raise StartupError(f"{child.name} did not start: {child.last_exit}")

        try:
            await asyncio.wait_for(asyncio.gather(*(ready(c) for c in group)), STARTUP_TIMEOUT_S)
        except TimeoutError:
            slow = [c.name for c in group if not c.ready.is_set()]
            raise StartupError(f"not ready after {STARTUP_TIMEOUT_S:.0f} s: {slow}") from None

    async def _connect(self) -> None:
        self.redis = connect(self.redis_url, name="supervisor")
        await self.redis.ping()
        self.redis_ok = True
        self.audit = Audit(self.redis, "supervisor", self.settings.audit_maxlen)

    async def stop(self) -> None:
        """Stop the children (gateway, transcribers, redis last), each within the timeout."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        await cancel_and_wait(self._monitor)
        self.record("supervisor_stop")
        for role in reversed(START_ORDER):
            if role == "redis" and self.redis is not None:
                await self._flush_audit(self.settings.shutdown_timeout)
                await self.redis.aclose()
                self.redis = None
            group = [c for c in self.children.values() if c.spec.role == role]
            await asyncio.gather(*(self.terminate(c) for c in group))
        await self.backend.close()
        results = await asyncio.gather(*self._runners.values(), return_exceptions=True)
        for name, result in zip(self._runners, results, strict=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("runner of %s failed", name, exc_info=result)
        if self.redis is not None:  # no embedded Redis: it was not closed above
            await self._flush_audit(self.settings.shutdown_timeout)
            await self.redis.aclose()

    async def terminate(self, child: Child) -> None:
        """SIGTERM, then SIGKILL if it has not exited within the shutdown timeout; a HUNG
        actor SIGKILL at once (it cannot drain: its loop is what stopped)."""
        handle = self._handles.get(child.name)
        exited = self._exited.get(child.name)
        if handle is None or exited is None or exited.is_set():
            return
        if child.state is State.HUNG:
            handle.signal(signal.SIGKILL)
            await exited.wait()
            return
        if child.state is not State.FATAL:
            child.state = State.STOPPING
        handle.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(exited.wait(), self.settings.shutdown_timeout)
        except TimeoutError:
            log.warning("%s did not stop within %.1f s; SIGKILL", child.name,
                        self.settings.shutdown_timeout)  # fmt: skip
            handle.signal(signal.SIGKILL)
            await exited.wait()

    # -- operations (the API's restart, drain and scale) ------------------------------

    async def restart(self, name: str) -> None:
        """Stop the actor gracefully (SIGTERM: a gateway drains) and start it again at once.

        A requested restart does not count against the restart intensity, and it ends
        a drain of that actor.
        """
        child = self._child(name)
        if child.state in (State.FATAL, State.EXITED):
            # Given up on (or done): an operator's restart starts it afresh.
            await self._revive(child)
            return
        if child.state not in (State.RUNNING, State.HUNG):
            raise OperationError(f"{name} is {child.state.value}, not RUNNING")
        child.restart_requested = True
        await self.drain(name, False)
        await self.terminate(child)
        await child.reach(State.RUNNING, State.FATAL, State.STOPPED)

    async def _revive(self, child: Child) -> None:
        """Start a FATAL or EXITED child again, its restart history cleared; until it is
        ready (OperationError if it fails again)."""
        runner = self._runners.get(child.name)
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        child.restart_times.clear()
        child.state = State.STOPPED
        self.record("actor_revive", child=child.name)
        self._launch(child)
        try:
            await self._await_ready([child])
        except StartupError as exc:
            raise OperationError(str(exc)) from None

    async def drain(self, name: str, on: bool = True) -> None:
        """Give a transcriber no new sessions (`on`), or take it back into rotation.

        Its sessions stay with it; the gateways read the drain set with the heartbeats.
        """
        child = self._child(name)
        if child.spec.role != "transcriber":
            raise OperationError(f"{name} is a {child.spec.role}: only transcribers drain "
                                 "(restarting a gateway drains its sessions)")  # fmt: skip
        if self.redis is None:
            raise OperationError("Redis not connected")
        if on:
            await self.redis.sadd(keys.DRAINING, name)
        else:
            await self.redis.srem(keys.DRAINING, name)
        if child.draining != on:
            child.draining = on
            self.record("actor_drain" if on else "actor_undrain", child=name)

    async def scale(self, role: str, count: int) -> list[str]:
        """Run `count` transcribers: start new ones, or stop the highest-numbered ones
        (their sessions move, with their audio not yet transcribed, to the others).
        The names of the transcribers afterwards."""
        if role != "transcriber" or self.new_transcriber is None:
            raise OperationError(f"cannot scale {role!r}: only the transcriber pool scales")
        if not 1 <= count <= MAX_TRANSCRIBERS:
            raise OperationError(f"transcriber count {count}: 1..{MAX_TRANSCRIBERS}")
        async with self._scaling:
            every = [c for c in self.children.values() if c.spec.role == "transcriber"]
            # Live ones count; FATAL or EXITED ones are revived first when more are asked
            # for, removed first when fewer are.
            dead = [c for c in every if c.state in (State.FATAL, State.EXITED)]
            current = [c for c in every if c not in dead]
            for child in dead[: max(0, count - len(current))]:
                await self._revive(child)
                current.append(child)
            for child in dead:
                if child not in current:
                    await self._remove(child)
            current.sort(key=lambda c: _index(c.name))
            taken = {c.name for c in current}
            added: list[Child] = []
            index = 0
            while len(current) + len(added) < count:
                name = f"transcriber-{index}"
                index += 1
                if name in taken:
                    continue
                child = Child(self.new_transcriber(name))
                self.children[child.name] = child
                self._launch(child)
                added.append(child)
            try:
                await self._await_ready(added)
            except StartupError as exc:
                # A pool half grown helps nobody: the new ones go, the others stay.
                for child in added:
                    await self._remove(child)
                log.error("scaling to %d transcribers failed: %s", count, exc)
                raise OperationError(f"{exc}; still {len(current)} transcriber(s)") from None
            for child in current[count:]:
                await self._remove(child)
            live_before = len(every) - len(dead)
            if live_before != count or dead:
                self.record("tree_scaled", role=role, before=live_before, after=count)
                log.info("transcribers: %d -> %d", live_before, count)
        names = [c.name for c in self.children.values() if c.spec.role == "transcriber"]
        return sorted(names, key=_index)

    async def _remove(self, child: Child) -> None:
        runner = self._runners.pop(child.name)
        if child.state in (State.BACKOFF, State.FATAL, State.EXITED):
            runner.cancel()  # waiting to start it again, or done: no process to stop
        else:
            await self.terminate(child)
        await asyncio.gather(runner, return_exceptions=True)
        await self.backend.remove(child.name)
        del self.children[child.name]
        self._handles.pop(child.name, None)
        self._exited.pop(child.name, None)
        self._died_at.pop(child.name, None)
        child.state = State.STOPPED
        child.last_exit = "removed by scaling down"
        await self._announce_down(child)
        if self.redis is not None:
            with contextlib.suppress(RedisError):
                await self.redis.srem(keys.DRAINING, child.name)

    def _child(self, name: str) -> Child:
        child = self.children.get(name)
        if child is None:
            raise UnknownActor(name)
        return child

    # -- one child ----------------------------------------------------------------

    async def _run(self, child: Child) -> None:
        consecutive = 0
        while True:
            exited = self._exited[child.name]
            exited.clear()
            child.ready.clear()
            child.state = State.STARTING
            child.heartbeat_age = None
            child.last_beat = None
            try:
                handle = await self.backend.spawn(child.spec)
            except OSError as exc:
                log.error("cannot start %s: %s", child.name, exc)
                child.last_exit = f"spawn failed: {exc}"
                child.state = State.FATAL
                exited.set()
                return
            self._handles[child.name] = handle
            child.pid = handle.pid
            child.instance = handle.instance
            child.started_at = time.monotonic()
            readiness = asyncio.create_task(self._readiness(child, handle))
            returncode = await handle.wait()
            died_at = time.monotonic()
            readiness.cancel()
            await asyncio.gather(readiness, return_exceptions=True)
            exited.set()
            child.ready.clear()
            child.last_exit = describe_exit(returncode)
            if child.state is State.HUNG:  # what it was, whatever the kill made of it
                child.last_exit = f"HUNG; {child.last_exit}"  # (a paused container: exit 0)
            child.last_exit_at = time.time()
            uptime = died_at - child.started_at
            if not self._started and not child.ready_ever:
                # As in OTP: a child that cannot start fails the supervisor's start-up
                # rather than looping through restarts.
                child.state = State.FATAL
                log.error("%s failed to start: %s", child.name, child.last_exit)
                return
            if child.restart_requested and not self._stopping.is_set():
                child.restart_requested = False
                child.restarts += 1
                self._died_at[child.name] = died_at
                self.record("actor_restart", child=child.name, restarts=child.restarts,
                            reason="requested")  # fmt: skip
                continue
            if self._stopping.is_set() or child.state == State.STOPPING:
                child.state = State.STOPPED
                self.record("actor_exit", child=child.name, exit=child.last_exit)
                return
            log.warning("%s (pid %s) exited: %s", child.name, child.pid, child.last_exit)
            self.record("actor_exit", child=child.name, pid=child.pid,
                        exit=child.last_exit, uptime_s=f"{uptime:.3f}")  # fmt: skip
            if not _should_restart(child.spec.restart, returncode):
                child.state = State.EXITED
                await self._announce_down(child)
                return
            child.restart_times = [
                t for t in child.restart_times if died_at - t < self.settings.restart_period
            ] + [died_at]
            if len(child.restart_times) > self.settings.restart_intensity:
                child.state = State.FATAL
                settings = self.settings
                log.error("%s: %d exits within %.0f s exceed HARK_RESTART_INTENSITY=%d: FATAL, "
                          "not restarting", child.name, len(child.restart_times),
                          settings.restart_period, settings.restart_intensity)  # fmt: skip
                self.record("actor_fatal", child=child.name, exit=child.last_exit)
                await self._announce_down(child)
                return
            if uptime >= BACKOFF_RESET_S:
                consecutive = 0
            delay = self._backoff(consecutive)
            consecutive += 1
            child.state = State.BACKOFF
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                if self._stopping.is_set():
                    child.state = State.STOPPED
                    return
            child.restarts += 1
            self._died_at[child.name] = died_at
            self.record("actor_restart", child=child.name, restarts=child.restarts,
                        delay_s=f"{delay:.3f}")  # fmt: skip

    def _backoff(self, consecutive: int) -> float:
        if consecutive == 0:
            return 0.0
        base = min(self.settings.backoff_max, self.settings.backoff_min * 2.0 ** (consecutive - 1))
        return base * self._rng.uniform(0.5, 1.0)  # jitter: restarts of many children spread

    async def _readiness(self, child: Child, handle: Handle) -> None:
        try:
            if child.spec.notify:
                ok = await asyncio.wait_for(handle.wait_ready(), STARTUP_TIMEOUT_S)
            else:
                ok = await asyncio.wait_for(self._ping_until_up(), STARTUP_TIMEOUT_S)
        except TimeoutError:
            ok = False
            log.error("%s not ready after %.0f s; killing it", child.name, STARTUP_TIMEOUT_S)
            handle.signal(signal.SIGKILL)
        if not ok:
            return
        child.state = State.RUNNING
        child.last_beat = time.monotonic()  # an actor beats before it says it is ready
        child.ready_ever = True
        child.ready.set()
        died_at = self._died_at.pop(child.name, None)
        if died_at is not None:
            child.last_restart_ms = round((time.monotonic() - died_at) * 1000, 1)
            log.info("%s back (pid %s) %.1f ms after its exit", child.name, child.pid,
                     child.last_restart_ms)  # fmt: skip
            self.record("actor_ready", child=child.name, pid=child.pid,
                        restart_ms=child.last_restart_ms)  # fmt: skip

    async def _ping_until_up(self) -> bool:
        probe = connect(self.redis_url, name="supervisor-probe")
        try:
            delay = 0.005
            while True:
                try:
                    return bool(await probe.ping())
                except RedisError:
                    await asyncio.sleep(delay)  # redis-server gives no readiness signal
                    delay = min(delay * 2, 0.2)
        finally:
            await probe.aclose()

    # -- reporting -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        # Sorted by kind, then number: a transcriber added by scaling is listed with the
        # others, not after the gateway.
        order = {"redis": 0, "transcriber": 1, "gateway": 2}
        children = sorted(
            self.children.values(), key=lambda c: (order.get(c.spec.role, 3), _index(c.name))
        )
        rows = [c.row() for c in children]
        healthy = self.redis_ok and all(c.state == State.RUNNING for c in self.children.values())
        if healthy:
            state = "OK"
        elif any(c.state == State.FATAL for c in self.children.values()):
            state = "FATAL"
        else:
            state = "DEGRADED"
        return {
            "state": state,
            "healthy": healthy,
            "redis": self.redis_ok,
            "backend": self.settings.backend,
            "uptime_s": round(time.monotonic() - self.started_at, 3),
            "actors": rows,
        }

    async def _announce_down(self, child: Child) -> None:
        """Tell the gateways a transcriber is gone for good, so they move its sessions."""
        if child.spec.role != "transcriber" or self.redis is None:
            return
        msg = ActorDown(child.name, f"{child.state.value}: {child.last_exit}")
        try:
            await self.redis.publish(keys.CONTROL, msg.encode())
        except RedisError:
            log.warning("could not announce that %s is down", child.name, exc_info=True)

    def record(self, event: str, **fields: Any) -> None:
        """Queue an audit entry. Written in order by one task, so that no restart ever
        waits on Redis (which may be the child being restarted)."""
        fields.setdefault("at", f"{time.time():.6f}")  # when it happened, not when written
        self._audit_queue.put_nowait((event, fields))
        if self._audit_writer is None:
            self._audit_writer = asyncio.create_task(self._write_audit(), name="audit-writer")

    async def _write_audit(self) -> None:
        while True:
            event, fields = await self._audit_queue.get()
            if self.audit is not None:
                await self.audit.log(event, **fields)  # logs and drops on Redis failure
            self._audit_queue.task_done()

    async def _flush_audit(self, grace: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._audit_queue.join(), grace)
        await cancel_and_wait(self._audit_writer)


def _should_restart(restart: Restart, returncode: int) -> bool:
    if restart is Restart.PERMANENT:
        return True
    if restart is Restart.TRANSIENT:
        return returncode != 0
    return False


def _index(name: str) -> int:
    """The number in `transcriber-N` (scaling down stops the highest first)."""
    return int(name.rsplit("-", 1)[1]) if name.rsplit("-", 1)[-1].isdigit() else 0
