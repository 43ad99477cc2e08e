"""What the supervisor knows about each child: its spec, state and history."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field
from typing import Any


class Restart(enum.Enum):
    """Erlang/OTP restart types."""

    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after an abnormal exit
    TEMPORARY = "temporary"  # never restarted


class State(enum.Enum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    HUNG = "HUNG"  # missed its heartbeats; being killed
    BACKOFF = "BACKOFF"  # exited; waiting to be restarted
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    EXITED = "EXITED"  # exited and not to be restarted (transient/temporary)
    FATAL = "FATAL"  # restarted too often within the intensity window; given up


@dataclass(frozen=True)
class ChildSpec:
    """How to start one actor. `name` is stable across restarts (it names the mailbox)."""

    name: str
    role: str  # redis | gateway | transcriber
    argv: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    restart: Restart = Restart.PERMANENT
    notify: bool = True  # readiness comes as a line on a pipe (hark actors)
    # argv of a warm spare of this role, which reads its name from stdin (see the
    # process backend); None: no spare
    spare_argv: tuple[str, ...] | None = None
    # What it reads on stdin as it starts (the process backend writes it, then closes
    # stdin): secrets that must not be in its command line, which every user can read.
    stdin: bytes | None = None


@dataclass
class Child:
    """A supervised child and what happened to it."""

    spec: ChildSpec
    _state: State = State.STOPPED
    pid: int | None = None
    started_at: float | None = None  # monotonic, of the current incarnation
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)  # monotonic
    last_exit: str | None = None
    last_exit_at: float | None = None  # wall clock
    last_restart_ms: float | None = None  # death -> replacement ready
    heartbeat_age: float | None = None
    last_beat: float | None = None  # monotonic: when its latest heartbeat was written
    ready_ever: bool = False  # some incarnation has been ready
    instance: str = ""  # the backend's token for the current incarnation
    load: int | None = None  # sessions (transcriber) or connections (gateway), from its beat
    mailbox: int | None = None  # a transcriber's mailbox entries not yet transcribed
    # A transcriber's queueing delay, from its beat: the longest its audio waited in its
    # mailbox since its beat before (what the gateways check HARK_MAX_LAG against).
    lag_ms: int | None = None
    busy: float | None = None  # a transcriber's engine: its share of the time, from its beat
    cost: float | None = None  # and its decoding seconds per audio second, from its beat
    hurried: float | None = None  # and the share of its finals decoded in a hurry
    draining: bool = False  # a transcriber given no new sessions
    restart_requested: bool = False  # by an operator: restart now, whatever the exit
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, value: State) -> None:
        self._state = value
        self._changed.set()  # wakes every reach() waiting now
        self._changed = asyncio.Event()

    async def reach(self, *states: State) -> State:
        """Wait until the child is in one of `states`; the state it is in."""
        while self._state not in states:
            await self._changed.wait()
        return self._state

    def row(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "name": self.name,
            "role": self.spec.role,
            "state": self.state.value,
            "pid": self.pid,
            "uptime_s": round(now - self.started_at, 3) if self.started_at is not None else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "last_exit_at": self.last_exit_at,
            "last_restart_ms": self.last_restart_ms,
            "heartbeat_age_s": self.heartbeat_age,
            "sessions": self.load,
            "mailbox": self.mailbox,
            "lag_ms": self.lag_ms,
            "busy": self.busy,
            "cost": self.cost,
            "hurried": self.hurried,
            "draining": self.draining,
        }


def describe_exit(returncode: int) -> str:
    """'exit 0', 'exit 3' or 'killed by SIGKILL'."""
    if returncode >= 0:
        return f"exit {returncode}"
    import signal

    try:
        return f"killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"killed by signal {-returncode}"
