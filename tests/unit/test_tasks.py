"""shared.tasks: the lean Event behaves as asyncio.Event does."""

from __future__ import annotations

import asyncio
import sys

from shared.tasks import Event


async def test_event_wakes_every_waiter_and_forgets_cancelled_ones() -> None:
    event = Event()
    assert sys.getsizeof(event._waiters) < 100  # no deque until it is needed
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    cancelled = asyncio.create_task(event.wait())
    await asyncio.sleep(0)  # every waiter parks on the event
    cancelled.cancel()
    await asyncio.wait([cancelled])
    assert len(event._waiters) == 3
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert not event._waiters and event.is_set()
    assert await event.wait()  # set: returns at once
    event.clear()
    late = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not late.done()
    event.set()
    assert await late
