"""A chunk's ack waits for the session's next reply and leaves in the same write
(services/gateway/session.py's AckWait, HARK_ACK_WAIT)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.gateway.metrics import GatewayMetrics
from services.gateway.protocol import AudioFormat
from services.gateway.session import AckWait, Session
from shared.messages import Transcript
from tests.unit.test_framer import parse


class Transport:
    """Records each write, as the socket would get it."""

    def __init__(self) -> None:
        self.writes: list[list[dict[str, Any]]] = []
        self.written = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.writes.append([json.loads(text) for _, text in parse(data)])
        self.written.set()

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def session(transport: Transport, ack_wait: AckWait | None) -> Session:
    return Session(
        cast(Any, SimpleNamespace(closed=False)), transport=cast(Any, transport),
        session_id="s1", client_id="c1", resume_token="t", actor="transcriber-0",
        fmt=AudioFormat(), queue_limit=10, metrics=GatewayMetrics(lambda: 1), ack_wait=ack_wait,
    )  # fmt: skip


def transcript(seq: int) -> Transcript:
    return Transcript(session_id="s1", client_id="c1", seq=seq, text=f"text {seq}", final=True,
                      actor="transcriber-0", received_at=0.0)  # fmt: skip


async def loop_turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_acks_wait_for_the_transcript_and_go_ahead_of_it_in_one_write() -> None:
    transport = Transport()
    s = session(transport, AckWait(60.0))  # a wait no test run outlasts
    s.acked(1, 3200)
    s.acked(2, 3200)
    await loop_turns()
    assert transport.writes == []  # both wait, for as long as the wait lasts
    s.on_message(transcript(1))
    await loop_turns()
    assert [[(r["status"], r["seq"]) for r in w] for w in transport.writes] == [
        [("received", 1), ("received", 2), ("transcript", 1)]
    ]


async def test_an_ack_with_nothing_to_wait_for_leaves_alone_at_the_end_of_its_wait() -> None:
    transport = Transport()
    s = session(transport, AckWait(0.01))
    s.acked(1, 3200)
    await asyncio.wait_for(transport.written.wait(), 5)
    assert transport.writes == [[{"status": "received", "size": 3200, "seq": 1}]]
    # The wait's timer is done with: a later ack waits anew and leaves the same way.
    transport.written.clear()
    s.acked(2, 3200)
    await asyncio.wait_for(transport.written.wait(), 5)
    assert [w[0]["seq"] for w in transport.writes] == [1, 2]


async def test_without_a_wait_each_loop_iterations_replies_leave_at_its_end() -> None:
    transport = Transport()
    s = session(transport, None)  # HARK_ACK_WAIT=0
    s.acked(1, 3200)
    await loop_turns()
    s.on_message(transcript(1))
    await loop_turns()
    assert [[r["status"] for r in w] for w in transport.writes] == [["received"], ["transcript"]]


async def test_any_other_reply_takes_a_waiting_ack_along() -> None:
    transport = Transport()
    s = session(transport, AckWait(60.0))
    s.acked(1, 3200)
    s.send({"status": "finalized", "seq": 1})
    await loop_turns()
    assert [[r["status"] for r in w] for w in transport.writes] == [["received", "finalized"]]


async def test_a_wait_whose_ack_left_early_does_not_send_the_next_ack_early(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Chunks 100 ms apart with a 100 ms wait: chunk 1's wait ends while chunk 2's ack
    # waits for its transcript. The loop's clock is the test's, so no timing is involved.
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    monkeypatch.setattr(loop, "time", lambda: now[0])
    transport = Transport()
    s = session(transport, AckWait(0.1))
    s.acked(1, 3200)
    s.on_message(transcript(1))  # the ack leaves with it; its wait goes on
    await loop_turns()
    now[0] += 0.09
    s.acked(2, 3200)
    now[0] += 0.02  # chunk 1's wait is over, chunk 2's is not
    await loop_turns()
    s.on_message(transcript(2))
    await loop_turns()
    assert [[(r["status"], r["seq"]) for r in w] for w in transport.writes] == [
        [("received", 1), ("transcript", 1)],
        [("received", 2), ("transcript", 2)],
    ]
