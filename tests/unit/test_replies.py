"""A transcript's reply is the JSON the protocol documents, byte for byte what json.dumps
makes of it (services/gateway/session.py formats it by hand for speed)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from services.gateway.metrics import GatewayMetrics
from services.gateway.protocol import AudioFormat
from services.gateway.session import Session
from shared.messages import Transcript
from tests.unit.test_framer import parse

# Ids and text with what JSON must escape: quotes, a backslash, a control character, non-ASCII.
CLIENT_ID = 'caller "7" \\ Zoë'
TEXT = 'he said "hi"\n\tthen: naïve café 日本'


class Transport:
    """Keeps each frame's text, as the client would read it."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.written = asyncio.Event()

    def write(self, data: bytes) -> None:
        self.texts += [text for _, text in parse(data)]
        self.written.set()

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0


def expected(t: Transcript, replayed: bool) -> str:
    """The reply as the gateway built it before: a dict, through json.dumps."""
    reply: dict[str, Any] = {
        "status": "transcript", "client_id": CLIENT_ID, "session_id": "s1", "text": t.text,
        "seq": t.seq, "final": t.final,
    }  # fmt: skip
    if t.start is not None:
        reply["start"], reply["end"] = t.start, t.end
    if t.words:
        reply["words"] = [{"word": w, "start": s, "end": e, "conf": p} for w, s, e, p in t.words]
    if replayed:
        reply["replayed"] = True
    return json.dumps(reply)


@pytest.mark.parametrize(
    ("final", "start", "words", "replayed"),
    [
        (True, None, [], False),
        (False, None, [], False),
        (True, 1.25, [], False),
        (True, 0.0, [["naïve", 0.0, 0.5, 0.93], ['"x"', 0.5, 1.0, 1]], False),
        (True, None, [], True),
        (True, 2.5, [["a", 2.5, 2.75, 0.5]], True),
    ],
    ids=["final", "partial", "timed", "words", "replayed", "all"],
)
async def test_a_transcript_reply_is_the_json_of_its_fields(
    final: bool, start: float | None, words: list[Any], replayed: bool
) -> None:
    transport = Transport()
    session = Session(
        cast(Any, SimpleNamespace(closed=False)), transport=cast(Any, transport),
        session_id="s1", client_id=CLIENT_ID, resume_token="t", actor="transcriber-0",
        fmt=AudioFormat(interim=True), queue_limit=10, metrics=GatewayMetrics(lambda: 1),
    )  # fmt: skip
    t = Transcript(
        session_id="s1", client_id=CLIENT_ID, seq=7, text=TEXT, final=final,
        actor="transcriber-0", received_at=0.0, start=start,
        end=None if start is None else start + 1.0, words=words,
    )  # fmt: skip
    session.transcript_reply(t, replayed)
    await asyncio.wait_for(transport.written.wait(), 5)
    assert transport.texts == [expected(t, replayed)]
    assert json.loads(transport.texts[0])["text"] == TEXT
