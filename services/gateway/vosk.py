"""The vosk-server WebSocket protocol, so existing vosk clients work unchanged.

A client may send `{"config": {"sample_rate": N}}` first (no reply), then audio
(16-bit PCM) in binary frames, each answered by exactly one JSON reply: the newest
final not yet sent (`{"result": [words], "text": ...}`) or else the current
partial (`{"partial": ...}`). `{"eof" : 1}` flushes the utterance in progress and
is answered by the final result, after which the server closes; `{"reset" : 1}`
does the same but the stream goes on. As vosk-server, the audio is taken to be
8 kHz until a config says otherwise (a rate may come as a float). Results come
from the same transcribers as `/ws`; only the replies differ.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Any

from services.gateway.session import Session
from shared.messages import Transcript


class VoskSession(Session):
    """A session whose replies follow vosk-server's one-reply-per-frame rule."""

    PROTOCOL = "vosk"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._finals: deque[Transcript] = deque()
        self._partial = ""

    def say_hello(self) -> None:
        pass  # vosk-server says nothing until the first frame

    def ack_reply(self, seq: int, size: int) -> None:
        pass  # vosk acks a frame with its one reply, sent by the handler

    def finalized_reply(self, seq: int) -> None:
        pass  # a reset is answered with its result, sent by the handler

    def transcript_reply(self, t: Transcript, replayed: bool) -> None:
        if t.final:
            self._finals.append(t)
            self._partial = ""
        else:
            self._partial = t.text

    def frame_reply(self) -> dict[str, Any]:
        """The reply to the frame just taken: a waiting final, else the partial."""
        if self._finals:
            return _result([self._finals.popleft()])
        return {"partial": self._partial}

    def ended_reply(self, summary: dict[str, Any]) -> dict[str, Any]:
        return self.final_reply()  # as if the client had sent eof

    def final_reply(self) -> dict[str, Any]:
        """The answer to eof: every final not yet sent, as one result."""
        finals, self._finals = list(self._finals), deque()
        return _result(finals)


def _result(finals: list[Transcript]) -> dict[str, Any]:
    words = [{"conf": p, "end": e, "start": s, "word": w}
             for t in finals for w, s, e, p in t.words]  # fmt: skip
    return {"result": words, "text": " ".join(t.text for t in finals if t.text)}


def parse(text: str) -> dict[str, Any]:
    """A vosk text frame; anything unreadable counts as nothing (vosk-server ignores it)."""
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return msg if isinstance(msg, dict) else {}
