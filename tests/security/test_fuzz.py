"""Hostile input at a live gateway: whatever bytes a client sends, the gateway stays up,
leaks no task and no Redis subscription, and other sessions keep being served.

Hypothesis makes the input: WebSocket frames written on a raw TCP connection after a
real handshake, so nothing is out of reach (any opcode, reserved bits, unmasked or
fragmented frames, lengths that lie, invalid UTF-8, control frames, abrupt closes), and
frames of the protocol with fields of every wrong type. A well-behaved session beside
them sends a chunk after every attack and must get its ack and its transcript.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import struct
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from services.gateway.gateway import Gateway
from tests.integration.gateway_fixtures import LIMIT, gateway_of, receive
from tests.security.conftest import KEY, bearer

# The transcriber first: it is live before the gateway starts looking for one.
pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("transcriber")]

EXAMPLES = 150

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=10,
)  # fmt: skip
control_messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["start", "finalize", "close", "keepalive", "nope"]) | json_values},
    optional={
        "encoding": st.sampled_from(["pcm_s16le", "pcm_f32le", "mp3"]) | json_values,
        "sample_rate": st.integers(-(2**70), 2**70) | json_values,
        "interim": json_values,
    },
)
payloads = st.one_of(
    st.binary(max_size=64),
    st.binary(min_size=LIMIT - 8, max_size=LIMIT + 8),  # around the chunk limit
    control_messages.map(lambda m: json.dumps(m).encode()),
    st.text(max_size=64).map(str.encode),
    st.sampled_from([b"\xff\xfe\xfd", b"\xc3\x28", b'{"type": "start", \xed\xa0\x80}']),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """One WebSocket frame, mostly well formed, sometimes not at all."""
    payload = draw(payloads)
    fin = draw(st.booleans()) if draw(st.integers(0, 9)) == 0 else True
    rsv = draw(st.integers(0, 7)) if draw(st.integers(0, 9)) == 0 else 0
    opcode = draw(st.sampled_from([0x1, 0x2, 0x2, 0x2, 0x0, 0x8, 0x9, 0xA, 0x3, 0xB, 0xF]))
    masked = draw(st.integers(0, 19)) != 0  # a client must mask; sometimes it does not
    length = len(payload)
    if draw(st.integers(0, 19)) == 0:  # a length that lies
        length = draw(st.sampled_from([0, 125, 126, 65535, 65536, 2**31, 2**63 - 1]))
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 65536:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if masked:
        key = draw(st.binary(min_size=4, max_size=4))
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


attacks = st.tuples(
    st.lists(frames(), min_size=1, max_size=6),
    st.sampled_from(["hang up", "close frame", "read, then hang up"]),
)


async def raw_session(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection through a real WebSocket handshake, then ours to write."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {KEY}\r\n\r\n"
    ).encode())  # fmt: skip
    status = await reader.readline()
    assert status.startswith(b"HTTP/1.1 101"), status
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    return reader, writer


async def attack(port: int, sent: list[bytes], ending: str) -> None:
    reader, writer = await raw_session(port)
    try:
        for frame in sent:
            writer.write(frame)
        if ending == "close frame":
            writer.write(b"\x88\x82" + b"\x00\x00\x00\x00" + b"\x03\xe8")
        await writer.drain()
        if ending != "hang up":
            with contextlib.suppress(TimeoutError):  # read what comes, up to a moment
                async with asyncio.timeout(0.2):
                    while await reader.read(65536):
                        pass
    except ConnectionError:
        pass  # the gateway hung up first: fine
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


class Probe:
    """A well-behaved session beside the attacks: one chunk, its ack and its final."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.seq = 0
        self.latencies: list[float] = []

    async def check(self) -> None:
        self.seq += 1
        t0 = time.perf_counter()
        await self.ws.send_bytes(b"\x00" * 320)
        replies = [await receive(self.ws) for _ in range(2)]
        self.latencies.append(time.perf_counter() - t0)
        assert [(r["status"], r["seq"]) for r in replies] == [
            ("received", self.seq), ("transcript", self.seq)]  # fmt: skip


async def quiet(gw: Gateway, keep: int) -> None:
    """Until the attack sessions have all ended (the probe's stays)."""
    while len(gw.sessions) > keep:
        ended = [s.ended.wait() for s in list(gw.sessions.values())[keep:]]
        await asyncio.wait([asyncio.ensure_future(e) for e in ended])


# One live gateway for every example, on purpose: it must survive them all in a row.
SHARED_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=SHARED_FIXTURES)
@given(attack=attacks)
async def test_no_byte_sequence_crashes_stalls_or_leaks(
    attack_state: dict[str, Any], gateway: TestClient[Any, Any], attack: Any
) -> None:
    sent, ending = attack
    state = attack_state
    if "probe" not in state:  # once, before the first attack
        ws = await gateway.ws_connect("/ws", headers=bearer(KEY))
        assert (await receive(ws))["status"] == "ready"
        state["probe"] = Probe(ws)
        state["tasks"] = asyncio.all_tasks()
    await attack_once(gateway, sent, ending)
    await state["probe"].check()


async def attack_once(gateway: TestClient[Any, Any], sent: list[bytes], ending: str) -> None:
    assert gateway.port is not None
    await attack(gateway.port, sent, ending)


@pytest.fixture
async def attack_state(gateway: TestClient[Any, Any], redis: Redis) -> Any:
    """What the attacks share; after the last one, the gateway is checked for leaks."""
    state: dict[str, Any] = {}
    yield state
    gw = gateway_of(gateway)
    probe: Probe = state["probe"]
    await asyncio.wait_for(quiet(gw, keep=1), 30)
    [session] = gw.sessions.values()  # the probe's
    # One subscription left: the probe session's (besides the control channel).
    assert gw.hub.channels == 1
    # Redis has answered every UNSUBSCRIBE of the attack sessions.
    await asyncio.wait_for(gw.hub.settled(), 30)
    channels = await redis.pubsub_channels("transcripts:*")
    assert channels == [f"transcripts:{session.client_id}".encode()]
    await probe.check()  # still served
    await probe.ws.close()
    await asyncio.wait_for(session.ended.wait(), 30)
    # No task left behind by the attacks: any started since the first one (the probe
    # session's included) ends by itself.
    new = [t for t in asyncio.all_tasks() - state["tasks"] if t is not asyncio.current_task()]
    if new:
        await asyncio.wait(new, timeout=5)
    left = [t.get_name() for t in new if not t.done()]
    assert left == [], left
    assert gw.hub.channels == 0
    ordered = sorted(probe.latencies)
    print(
        f"{EXAMPLES} attacks; the probe session's chunk->final p50 "
        f"{ordered[len(ordered) // 2] * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )
