"""Half-sent handshakes cannot take every file descriptor: they are closed after
HARK_HANDSHAKE_TIMEOUT, and a gateway near its descriptor limit says so (503 and
/ready) instead of resetting connections."""

from __future__ import annotations

import asyncio
import resource
import select
import socket
import time

import aiohttp
import pytest

from tests.conftest import TreeFactory

pytestmark = pytest.mark.timeout(60)

LIMIT = 300  # the gateway's open-file limit in this test


def _half_handshake(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")  # no end
    return sock


def _closed_by_server(socks: list[socket.socket], within: float) -> int:
    """How many of `socks` the server closes (EOF) within `within` seconds."""
    pending, closed = list(socks), 0
    end = time.monotonic() + within
    while pending and time.monotonic() < end:
        readable, _, _ = select.select(pending, [], [], max(0.0, end - time.monotonic()))
        for sock in readable:
            try:
                eof = sock.recv(1024) == b""
            except ConnectionResetError:
                eof = True
            closed += eof
            pending.remove(sock)
    return closed


async def test_half_sent_handshakes_are_closed_and_descriptor_pressure_is_reported(
    start_tree: TreeFactory,
) -> None:
    tree = await start_tree(env={"HARK_HANDSHAKE_TIMEOUT": "2"})
    gateway = await tree.actor("gateway")
    # As under `ulimit -n 300` (set from outside, after the gateway raised its own).
    resource.prlimit(gateway["pid"], resource.RLIMIT_NOFILE, (LIMIT, LIMIT))
    socks = [_half_handshake(tree.port) for _ in range(LIMIT - 40)]
    try:
        async with aiohttp.ClientSession() as http:
            # Near its limit: a clear 503, and /ready says why.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(tree.ws_url)
            assert refused.value.status == 503
            async with http.get(f"http://127.0.0.1:{tree.port}/ready") as resp:
                body = await resp.json()
            assert resp.status == 503 and body["file_descriptors"]["limit"] == LIMIT, body
            # The half-sent handshakes are closed after the timeout...
            closed = await asyncio.to_thread(_closed_by_server, socks, 10.0)
            assert closed == len(socks)
            # ... and the gateway takes connections again.
            async with http.ws_connect(tree.ws_url) as ws:
                assert (await ws.receive_json(timeout=10))["status"] == "ready"
    finally:
        for sock in socks:
            sock.close()
