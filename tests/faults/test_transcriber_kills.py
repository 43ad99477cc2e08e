"""Transcribers SIGKILLed at random moments while 20 sessions stream: nothing lost or doubled.

The kill moments are drawn from a seeded RNG (the seed is printed; set
HARK_FAULT_SEED to replay a run) as points in the run's progress, counted in
finals delivered, so the test waits on progress, never on the clock.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
from typing import Any

import aiohttp
import pytest

from tests.conftest import TreeFactory
from tests.tree import Tree

pytestmark = pytest.mark.timeout(240)

SESSIONS = 20
CHUNKS = 200
KILLS = 12
WINDOW = 8  # chunks a client keeps in flight (sent, final not yet back)


class Progress:
    """Finals delivered across all clients, awaitable by threshold."""

    def __init__(self) -> None:
        self.finals = 0
        self._changed = asyncio.Condition()

    async def add(self) -> None:
        async with self._changed:
            self.finals += 1
            self._changed.notify_all()

    async def reach(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.finals >= count)


async def run_client(
    tree: Tree, http: aiohttp.ClientSession, index: int, progress: Progress
) -> dict[str, Any]:
    replies: list[dict[str, Any]] = []
    finals = 0
    more = asyncio.Event()
    async with http.ws_connect(tree.ws_url) as ws:
        hello = await ws.receive_json(timeout=20)

        async def read() -> None:
            nonlocal finals
            while finals < CHUNKS:
                msg = await ws.receive(timeout=60)
                assert msg.type == aiohttp.WSMsgType.TEXT, f"client {index}: {msg}"
                reply = msg.json()
                replies.append(reply)
                if reply["status"] == "transcript" and reply["final"]:
                    finals += 1
                    more.set()
                    await progress.add()

        reader = asyncio.create_task(read())
        for seq in range(1, CHUNKS + 1):
            while seq - finals > WINDOW:
                more.clear()
                await more.wait()
            await ws.send_bytes(b"\x00" * (100 * (index + 1) + seq % 7))
        await reader
    return {"hello": hello, "replies": replies, "index": index}


async def test_random_sigkills_of_transcribers_lose_and_duplicate_nothing(
    start_tree: TreeFactory, redis_url: str
) -> None:
    seed = int(os.environ.get("HARK_FAULT_SEED", random.randrange(2**32)))
    print(f"fault seed: {seed} (HARK_FAULT_SEED={seed} replays it)")
    rng = random.Random(seed)
    tree = await start_tree(
        redis_url=redis_url, transcribers=3,
        env={"HARK_RESTART_INTENSITY": "100", "HARK_RESTART_PERIOD": "10"},
    )  # fmt: skip
    total = SESSIONS * CHUNKS
    moments = sorted(rng.sample(range(total // 20, total * 9 // 10), KILLS))
    progress = Progress()
    kills: list[tuple[str, int]] = []

    async def killable() -> list[dict[str, Any]]:
        # A victim stays RUNNING in the status until the supervisor has reaped it,
        # and signalling a zombie succeeds: leave out pids already killed.
        dead = {pid for _, pid in kills}
        return [a for a in (await tree.status())["actors"]
                if a["role"] == "transcriber" and a["state"] == "RUNNING"
                and a["pid"] not in dead]  # fmt: skip

    async def killer() -> None:
        for moment in moments:
            await progress.reach(moment)
            running = await killable()
            while not running and progress.finals < total:
                # All are down: try again at the next final, which a restarted one sends.
                await progress.reach(progress.finals + 1)
                running = await killable()
            if not running:
                continue
            victim = rng.choice(running)
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue  # it died after the status was read; that kill was not ours
            kills.append((victim["name"], victim["pid"]))

    async with aiohttp.ClientSession() as http:
        killing = asyncio.create_task(killer())
        results = await asyncio.gather(
            *(run_client(tree, http, i, progress) for i in range(SESSIONS))
        )
        await killing

    # Every chunk: exactly one ack and one final, in order, for its own client only.
    for result in results:
        hello, replies, index = result["hello"], result["replies"], result["index"]
        acks = [r["seq"] for r in replies if r["status"] == "received"]
        finals = [r for r in replies if r["status"] == "transcript"]
        assert acks == list(range(1, CHUNKS + 1)), f"client {index}: acks {acks[:20]}..."
        assert [f["seq"] for f in finals] == list(range(1, CHUNKS + 1)), f"client {index}"
        assert {f["client_id"] for f in finals} == {hello["client_id"]}
        sizes = [int(f["text"].rsplit("size: ", 1)[1].split()[0]) for f in finals]
        assert sizes == [100 * (index + 1) + seq % 7 for seq in range(1, CHUNKS + 1)]
        assert not [r for r in replies if r["status"] == "error"]

    # The faults really happened: pids died, actors came back, audio was recovered.
    assert len(kills) >= 10, f"only {len(kills)} kills"
    try:
        for _ in kills:  # the last victims may still be coming back
            await tree.wait_audit(lambda e: e["event"] == "actor_ready")
    except TimeoutError:
        for e in await tree.audit():
            if e["event"].startswith(("actor_", "supervisor")):
                print(e)
        raise
    audit = await tree.audit()
    killed = [e for e in audit if e["event"] == "actor_exit" and e["exit"] == "killed by SIGKILL"]
    assert {(e["child"], int(e["pid"])) for e in killed} == set(kills)
    ready = [float(e["restart_ms"]) for e in audit if e["event"] == "actor_ready"]
    assert len(ready) == len(kills)
    report = await tree.status()
    transcribers = [a for a in report["actors"] if a["role"] == "transcriber"]
    assert all(a["state"] == "RUNNING" for a in transcribers)
    assert sum(a["restarts"] for a in transcribers) == len(kills)
    assert not {pid for _, pid in kills} & {a["pid"] for a in transcribers}
    recovered = sum(int(e.get("recovered", 0)) for e in audit if e["event"] == "actor_start")
    # Repeated crashes of one actor back off on purpose (100 ms, doubling); what the
    # restart itself costs is the rest.
    delays: dict[str, list[float]] = {}
    for e in audit:
        if e["event"] == "actor_restart":
            delays.setdefault(e["child"], []).append(float(e["delay_s"]) * 1000)
    mechanical = [float(e["restart_ms"]) - delays[e["child"]].pop(0)
                  for e in audit if e["event"] == "actor_ready"]  # fmt: skip
    print(f"kills: {len(kills)}; entries replayed by restarted actors: {recovered}")
    print(f"death -> replacement ready, ms: median {statistics.median(ready):.0f}, "
          f"max {max(ready):.0f} (all: {sorted(round(r) for r in ready)})")  # fmt: skip
    print(f"the same less the backoff chosen, ms: median {statistics.median(mechanical):.0f}, "
          f"max {max(mechanical):.0f}")  # fmt: skip
