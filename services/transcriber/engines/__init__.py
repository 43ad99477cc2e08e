"""The engine interface: what a transcriber needs from a speech recogniser.

An engine opens one `EngineSession` per client session. The session takes audio
chunks in seq order and returns results; `committed_seq` tells the actor which
chunks are covered by a final already returned, so it can XACK them and no
earlier. Replaying un-acked chunks into a fresh session after a crash must
rebuild the same state: engines keep no state outside their sessions.

Adding an engine is one module here plus a line in `create_engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Result:
    """A transcript: `seq` is the last chunk it covers."""

    seq: int
    text: str
    final: bool


class EngineSession(Protocol):
    """The recognition state of one client session."""

    @property
    def committed_seq(self) -> int:
        """Every chunk with seq <= this is covered by a final already returned."""
        ...

    def feed(self, seq: int, audio: bytes) -> list[Result]: ...

    def flush(self) -> list[Result]:
        """End the current utterance now and return its final, if any."""
        ...


class Engine(Protocol):
    """A recogniser, loaded once per actor, shared by its sessions."""

    name: str

    def open_session(self, session_id: str, encoding: str, sample_rate: int) -> EngineSession: ...


def create_engine(name: str) -> Engine:
    """The engine called `name`; a missing dependency is reported here, at start."""
    if name == "mock":
        from services.transcriber.engines.mock import MockEngine

        return MockEngine()
    raise ValueError(f"unknown engine {name!r}")
