"""Stopping background tasks for sure."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_S = 0.1


class Event(asyncio.Event):
    """An asyncio.Event that keeps its waiters in a list (56 bytes empty), not a deque
    (760): a gateway holds three per session, on ten thousand mostly idle sessions, and
    an event rarely has more than one waiter. Every Event method works on either."""

    def __init__(self) -> None:
        super().__init__()
        self._waiters: Any = []


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has ended; log an error it ended with.

    A cancellation can be lost inside a library (a timeout or retry wrapper that
    turns CancelledError into a retryable error), so it is repeated until the task
    is done.
    """
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=RECANCEL_S)
    log_failure(task)


def log_failure(task: asyncio.Task[Any]) -> None:
    """Log the error a finished task ended with, if any (also a done callback)."""
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())
