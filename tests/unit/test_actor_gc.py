"""An actor's garbage collector: what was loaded before its loop is frozen, and young
collections are rare (shared/actor.py, GC_THRESHOLDS)."""

from __future__ import annotations

import asyncio
import gc

from shared import actor


def test_an_actor_runs_with_its_gc_thresholds_and_its_start_frozen() -> None:
    seen: dict[str, object] = {}

    async def main(stop: asyncio.Event) -> int:
        seen["thresholds"] = gc.get_threshold()
        seen["frozen"] = gc.get_freeze_count()
        return 0

    before = gc.get_threshold()
    try:
        assert actor.run(main, grace=1.0) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen["thresholds"] == actor.GC_THRESHOLDS
    assert isinstance(seen["frozen"], int) and seen["frozen"] > 0
