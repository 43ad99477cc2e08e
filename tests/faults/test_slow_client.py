"""A client that stops reading beside 50 that read: it is warned, then closed; they carry on."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from typing import Any

import aiohttp
import psutil
import pytest

from tests.conftest import TreeFactory
from tests.tree import Tree

pytestmark = pytest.mark.timeout(120)

HEALTHY = 50
HEALTHY_CHUNKS = 40
QUEUE = 64  # HARK_SESSION_QUEUE for this test


def rss_kib(pid: int) -> int:
    rss: int = psutil.Process(pid).memory_info().rss
    return rss // 1024


def tiny_receive_buffer(addr_info: Any) -> socket.socket:
    """A client socket with a 4 KiB receive buffer, so a client that stops reading
    shows up at the server after kilobytes, not megabytes."""
    family, kind, proto, _, _ = addr_info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


async def healthy(tree: Tree, http: aiohttp.ClientSession, stalled: asyncio.Event) -> list[float]:
    """Streams at 20 chunks/s once the stalled client is stalling; send -> final latencies."""
    await stalled.wait()
    latencies: list[float] = []
    async with http.ws_connect(tree.ws_url) as ws:
        await ws.receive_json(timeout=20)
        for _ in range(HEALTHY_CHUNKS):
            sent = time.monotonic()
            await ws.send_bytes(b"\x00" * 3200)
            while True:
                reply = await ws.receive_json(timeout=20)
                if reply["status"] == "transcript":
                    latencies.append(time.monotonic() - sent)
                    break
            await asyncio.sleep(0.05)  # pacing of a live stream, not a wait for an event
    return latencies


async def test_stalled_client_is_warned_then_closed_and_others_keep_their_pace(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, env={"HARK_SESSION_QUEUE": str(QUEUE)})
    gateway_pid = (await tree.actor("gateway"))["pid"]
    rss_before = rss_kib(gateway_pid)
    stalled = asyncio.Event()
    connector = aiohttp.TCPConnector(socket_factory=tiny_receive_buffer)
    async with (
        aiohttp.ClientSession(connector=connector) as slow_http,
        aiohttp.ClientSession() as http,
        slow_http.ws_connect(tree.ws_url) as slow,
    ):
        hello = await slow.receive_json(timeout=10)
        sid = hello["session_id"]
        workers = [asyncio.create_task(healthy(tree, http, stalled)) for _ in range(HEALTHY)]
        # Send and never read, until the gateway gives up on this client.
        closed = asyncio.create_task(tree.wait_audit(
            lambda e: e["event"] == "session_close" and e.get("session") == sid, within=60
        ))  # fmt: skip
        sent = 0
        while not closed.done() and sent < 50_000:
            try:
                await slow.send_bytes(b"\x00" * 10)
            except ConnectionError:
                break
            sent += 1
            if sent == 200:
                stalled.set()
                stalled_at = time.monotonic()
        stalled.set()
        close_entry = await closed
        closed_after = time.monotonic() - stalled_at
        rss_peak = rss_kib(gateway_pid)
        results = await asyncio.gather(*workers)
        # What the stalled client finds once it reads: a warning, then the close.
        warned, close_code = False, None
        async for msg in slow:
            if msg.type == aiohttp.WSMsgType.TEXT and '"slow_consumer"' in msg.data:
                warned = True
        close_code = slow.close_code
    latencies = sorted(x for r in results for x in r)
    p50 = statistics.median(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"stalled client sent {sent} chunks without reading; healthy send->final "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; gateway RSS "
          f"{rss_before} -> {rss_peak} KiB; closed {closed_after:.1f} s after")  # fmt: skip
    assert close_entry["reason"] == "slow_consumer"
    assert all(len(r) == HEALTHY_CHUNKS for r in results)
    assert close_code in (aiohttp.WSCloseCode.TRY_AGAIN_LATER, aiohttp.WSCloseCode.ABNORMAL_CLOSURE)
    assert warned or close_code == aiohttp.WSCloseCode.ABNORMAL_CLOSURE
    assert rss_peak - rss_before < 64 * 1024, "gateway memory grew with the stalled client"
    assert p99 < 1.0, "healthy clients were held up by the stalled one"


async def test_a_client_that_stops_reading_and_sending_is_disconnected_within_the_close_timeout(
    start_tree: TreeFactory, redis_url: str
) -> None:
    # It sends enough to fill its reply queue, then neither reads nor sends: the close
    # frame never leaves, and the connection stayed open until the client went (52 s).
    tree = await start_tree(redis_url=redis_url, env={"HARK_SESSION_QUEUE": str(QUEUE)})
    connector = aiohttp.TCPConnector(socket_factory=tiny_receive_buffer)
    async with (
        aiohttp.ClientSession(connector=connector) as slow_http,
        slow_http.ws_connect(tree.ws_url) as slow,
    ):
        sid = (await slow.receive_json(timeout=10))["session_id"]
        for _ in range(50_000):  # past what the socket buffers hold: its queue overflows
            try:
                await slow.send_bytes(b"\x00" * 10)
            except ConnectionError:
                break
        began = time.monotonic()
        # Written once the gateway's handler for the connection has ended.
        entry = await tree.wait_audit(
            lambda e: e["event"] == "session_close" and e.get("session") == sid, within=20
        )
        gone_after = time.monotonic() - began
    assert entry["reason"] == "slow_consumer"
    print(f"stalled and silent client disconnected {gone_after:.1f} s after its last frame")
    assert gone_after < 10, gone_after
