"""The audit log: one Redis Stream (`hark:audit`) that every actor appends to.

Entries are flat string maps: `event`, `actor`, `ts`, optionally `session`, plus
event-specific fields. Secrets never go in: callers pass only ids and counts.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from shared import keys
from shared.logs import printable
from shared.redis_util import Coalescer, Command

log = logging.getLogger(__name__)

# Set by Audit itself: a caller's field of the same name would overwrite the writer's.
RESERVED = frozenset({"event", "actor", "ts", "session"})


class Audit:
    """Writes an actor's audit entries. Appending never raises into the caller's path."""

    def __init__(
        self, redis: Redis, actor: str, maxlen: int, coalescer: Coalescer | None = None
    ) -> None:
        self._redis = redis
        self.actor = actor
        self.maxlen = maxlen
        # Where given, entries go out in its pipelines: a burst of sessions closing
        # at once then costs a few round trips, not one each.
        self._coalescer = coalescer

    def command(self, event: str, session: str | None = None, **fields: Any) -> Command:
        """The entry's XADD, as every writer here sends it (a `Wire`, the coalescer, a
        redis-py client or pipeline). Fields whose value is None are left out."""
        if RESERVED & fields.keys():
            raise ValueError(f"audit fields {sorted(RESERVED & fields.keys())} are reserved")
        # Built flat, as the command takes it: a transcriber writes one per final.
        flat = ["event", event, "actor", self.actor, "ts", f"{time.time():.6f}"]
        if session is not None:
            flat += ("session", session)
        for key, value in fields.items():
            if value is not None:
                flat += (key, str(value))
        return ("XADD", keys.AUDIT, "MAXLEN", "~", self.maxlen, "*", *flat)

    def add_to(self, pipe: Pipeline, event: str, session: str | None = None, **fields: Any) -> None:
        """Queue the entry on a pipeline the caller executes anyway."""
        pipe.execute_command(*self.command(event, session, **fields))

    async def log(self, event: str, session: str | None = None, **fields: Any) -> None:
        try:
            command = self.command(event, session, **fields)
            if self._coalescer is None:
                await self._redis.execute_command(*command)  # type: ignore[no-untyped-call]
            else:
                await self._coalescer.execute(*command)
        except Exception:
            # Losing an audit line must not take a session or a restart down with it.
            log.warning("audit write failed: %s session=%s", event, session, exc_info=True)


def format_entry(entry_id: str, fields: dict[str, str]) -> str:
    """One audit entry as a readable line: time, event, actor, session, the rest."""
    ts = float(fields.get("ts", "0"))
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"
    rest = " ".join(
        f"{printable(k)}={printable(v)}" for k, v in fields.items()
        if k not in ("ts", "event", "actor", "session")
    )  # fmt: skip
    session = printable(fields.get("session", "-"))
    event, actor = printable(fields.get("event", "?")), printable(fields.get("actor", "?"))
    return f"{when} {event:<16} {actor:<16} {session} {rest}"
