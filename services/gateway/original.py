"""The original service's protocol, exactly, on `/original`: what its README promised
its clients (../shared/seeds), so they switch to hark by changing a URL.

No greeting; each binary frame is answered `{"status": "received", "size": N}`, then its
transcript `{"client_id": ..., "text": ..., "status": "transcript"}` (finals only: the
original had no partials); errors are `{"error": ..., "status": "error"}` with its texts
("Audio data is empty", "Audio data too large (max N bytes)"). The audio goes through
the same transcribers, with the same guarantees, as on `/ws`.
"""

from __future__ import annotations

import json
from typing import Any

from services.gateway.protocol import ClientError
from services.gateway.session import Session
from shared.messages import Transcript


class OriginalSession(Session):
    """A session that answers in the original service's words."""

    PROTOCOL = "original"
    max_chunk_bytes = 0  # set by the gateway, for the too-large text

    def say_hello(self) -> None:
        pass  # the original said nothing until the first frame

    def ack_reply(self, seq: int, size: int) -> None:
        self.send_text(json.dumps({"status": "received", "size": size}), ack=True)

    def finalized_reply(self, seq: int) -> None:
        pass  # no such message in the original

    def transcript_reply(self, t: Transcript, replayed: bool) -> None:
        if t.final:
            self.send({"client_id": self.client_id, "text": t.text, "status": "transcript"})

    def error_reply(self, exc: ClientError) -> dict[str, Any]:
        if exc.code == "empty_frame":
            text = "Audio data is empty"
        elif exc.code == "chunk_too_large":
            text = f"Audio data too large (max {self.max_chunk_bytes} bytes)"
        else:
            text = exc.message
        return {"error": text, "status": "error"}
