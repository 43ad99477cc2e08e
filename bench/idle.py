"""Idle connections: how many one gateway holds, what each costs, and whether all
still answer after a while.

    python -m bench.idle --connections 10000 --hold 60

Starts `hark up --engine mock` (embedded Redis, HARK_MAX_SESSIONS set above the
count), opens `--connections` WebSocket sessions from `--procs` client processes
(each offering permessage-deflate, as a browser does), holds them idle for `--hold`
seconds, then has every one send a chunk, wait for its ack and transcript, and close.
Prints one JSON line: the gateway's and Redis's RSS before and after connecting, the
gateway's KB per connection, how many answered, and through that last burst (every
client sending, then closing, at once) the slowest answer of the gateway's `/stats`
polled every 100 ms and whether the supervisor restarted the gateway (a loop blocked
for 3 heartbeats looks hung).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import sys
import threading
import time
import urllib.request
from multiprocessing.synchronize import Event
from typing import Any

import aiohttp

from bench.load import CHUNK, CONNECTS_AT_ONCE, Hark, _actors, _rss_mb, arg_parser


async def _hold(url: str, count: int, connected: Any, go: Event, results: Any) -> None:
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
    # Each open connection with the statuses of the replies it has read. Idle is not
    # deaf: a reader per connection answers the gateway's pings (every 30 s), as any
    # client that keeps its socket open does; one that never reads is closed.
    opened: list[tuple[aiohttp.ClientWebSocketResponse, asyncio.Queue[str]]] = []
    readers: list[asyncio.Task[None]] = []
    errors: dict[str, int] = {}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def connect() -> None:
            async with gate:
                try:
                    # Offering permessage-deflate, as browsers do (hark declines it).
                    ws = await http.ws_connect(url, heartbeat=None, compress=15)
                    hello = await ws.receive_json(timeout=60)
                except Exception as exc:  # counted, not raised: the figure is the count
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    return
            if hello.get("status") == "ready":
                replies: asyncio.Queue[str] = asyncio.Queue()
                opened.append((ws, replies))
                readers.append(asyncio.create_task(read(ws, replies)))

        async def read(ws: aiohttp.ClientWebSocketResponse, replies: asyncio.Queue[str]) -> None:
            async for msg in ws:  # pings are answered inside
                if msg.type == aiohttp.WSMsgType.TEXT:
                    replies.put_nowait(json.loads(msg.data).get("status", ""))

        await asyncio.gather(*(connect() for _ in range(count)))
        connected.put((len(opened), errors))
        await asyncio.get_running_loop().run_in_executor(None, go.wait)

        async def answer(ws: aiohttp.ClientWebSocketResponse, replies: asyncio.Queue[str]) -> bool:
            try:
                await ws.send_bytes(bytes(CHUNK))
                got: set[str] = set()
                while got != {"received", "transcript"}:
                    got.add(await asyncio.wait_for(replies.get(), 60))
                return True
            except Exception:
                return False
            finally:
                await ws.close()

        answered = await asyncio.gather(*(answer(ws, replies) for ws, replies in opened))
        for task in readers:
            task.cancel()
        results.put(sum(answered))


def _probe(url: str, stop: threading.Event, slowest: list[float]) -> None:
    """Poll `url` every 100 ms until `stop`; keep the slowest answer (ms) in `slowest`."""
    while not stop.wait(0.1):
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                resp.read()
        except OSError:
            continue
        slowest[0] = max(slowest[0], (time.perf_counter() - t0) * 1000)


def _restarts(status_url: str) -> int:
    """How often the supervisor has restarted the gateway."""
    with urllib.request.urlopen(f"{status_url}/status", timeout=5) as resp:
        return sum(a["restarts"] for a in json.load(resp)["actors"] if a["name"] == "gateway")


def _client_proc(url: str, count: int, connected: Any, go: Event, results: Any) -> None:
    import uvloop

    uvloop.run(_hold(url, count, connected, go, results))


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser("bench.idle", __doc__)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=60.0, help="seconds held idle")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    args = parser.parse_args(argv)

    hark = Hark(1, env={"HARK_MAX_SESSIONS": str(args.connections + 100)})
    try:
        pids = _actors(hark.status_url)
        before = {name: _rss_mb(pids[name]) for name in ("gateway", "redis")}
        ctx = multiprocessing.get_context("spawn")
        connected, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        shares = [args.connections // args.procs + (i < args.connections % args.procs)
                  for i in range(args.procs)]  # fmt: skip
        procs = [ctx.Process(target=_client_proc, args=(hark.url, n,
                                                        connected, go, results))
                 for n in shares]  # fmt: skip
        t0 = time.perf_counter()
        for proc in procs:
            proc.start()
        opened, errors = 0, dict[str, int]()
        for _ in procs:
            n, errs = connected.get(timeout=600)
            opened += n
            for key, value in errs.items():
                errors[key] = errors.get(key, 0) + value
        connect_s = time.perf_counter() - t0
        held = {name: _rss_mb(pids[name]) for name in ("gateway", "redis")}
        time.sleep(args.hold)  # idle on purpose: that is what is measured
        after_hold = {name: _rss_mb(pids[name]) for name in ("gateway", "redis")}
        stats_url = hark.url.replace("ws://", "http://").replace("/ws", "/stats")
        stop, slowest = threading.Event(), [0.0]
        probe = threading.Thread(target=_probe, args=(stats_url, stop, slowest))
        probe.start()
        go.set()
        answered = sum(results.get(timeout=600) for _ in procs)
        for proc in procs:
            proc.join(60)
        stop.set()
        probe.join()
        restarts = _restarts(hark.status_url)
    finally:
        hark.stop()
    per = {name: round((held[name] - before[name]) * 1024 / max(1, opened), 1) for name in held}
    print(json.dumps({
        "scenario": "idle", "connections": args.connections, "opened": opened,
        "connect_errors": errors, "connect_s": round(connect_s, 1), "hold_s": args.hold,
        "answered_after_hold": answered,
        "rss_mb": {"before": before, "held": held, "after_hold": after_hold},
        "kb_per_connection": per,
        "burst": {"stats_slowest_ms": round(slowest[0], 1), "gateway_restarts": restarts},
    }), flush=True)  # fmt: skip
    return 0 if answered == opened == args.connections and not restarts else 1


if __name__ == "__main__":
    sys.exit(main())
