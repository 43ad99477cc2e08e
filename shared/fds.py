"""File descriptors: how many a process holds, its limit, and raising the soft limit to
what the settings need (a gateway holds one per connection)."""

from __future__ import annotations

import os
import resource
import time

# Descriptors a gateway needs besides its connections: Redis connections, listening
# sockets, logs, the event loop's own.
RESERVE = 256
# Share of the soft limit past which a gateway takes no new connection (and /ready says
# so): the rest is for the connections it has and what they need.
PRESSURE = 0.9


def limits() -> tuple[int, int]:
    """The soft and hard RLIMIT_NOFILE (RLIM_INFINITY as a large number)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    big = 1 << 30
    return (big if soft == resource.RLIM_INFINITY else soft,
            big if hard == resource.RLIM_INFINITY else hard)  # fmt: skip


def raise_soft_limit(need: int) -> tuple[int, int]:
    """Raise the soft limit towards `need` (never past the hard one); the limits after."""
    soft, hard = limits()
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    return limits()


class Usage:
    """Open descriptors of this process, counted at most every `every` seconds (a count
    lists /proc/self/fd: about a millisecond at 10,000)."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        self._at = -1e9
        self._open = 0

    def open(self) -> int:
        now = time.monotonic()
        if now - self._at >= self.every:
            try:
                self._open = len(os.listdir("/proc/self/fd"))
            except OSError:
                self._open = 0  # not Linux: unknown, no pressure claimed
            self._at = now
        return self._open

    def pressed(self) -> bool:
        """Whether past PRESSURE of the soft limit."""
        return self.open() >= PRESSURE * limits()[0]
