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

from shared.config import Settings

Word = tuple[str, float, float, float]  # text, start s, end s, probability


@dataclass(frozen=True, slots=True)
class Result:
    """A transcript: `seq` is the last chunk it covers; times in seconds of the stream."""

    seq: int
    text: str
    final: bool
    start: float | None = None
    end: float | None = None
    words: tuple[Word, ...] = ()


class BadInput(ValueError):
    """Audio the engine cannot use; `code` is the client-facing error code."""

    code = "bad_audio"


class EngineUnavailable(RuntimeError):
    """The engine cannot run here; the message says what to install or set."""


class EngineSession(Protocol):
    """The recognition state of one client session."""

    @property
    def committed_seq(self) -> int:
        """Every chunk with seq <= this is covered by a final already returned."""
        ...

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        """Chunk `seq`, which starts `start_s` seconds into the stream."""
        ...

    def flush(self) -> list[Result]:
        """End the current utterance now and return its final, if any."""
        ...


class Engine(Protocol):
    """A recogniser, loaded once per actor, shared by its sessions."""

    name: str
    blocking: bool  # True: calls take long (model inference) and run off the event loop

    def open_session(self, session_id: str, encoding: str, sample_rate: int) -> EngineSession: ...


def create_engine(settings: Settings) -> Engine:
    """The engine the settings name; a missing dependency is reported here, at start."""
    if settings.engine == "mock":
        from services.transcriber.engines.mock import MockEngine

        return MockEngine()
    if settings.engine == "whisper":
        try:
            from services.transcriber.engines.whisper import WhisperEngine
        except ImportError as exc:
            raise EngineUnavailable(
                f"the whisper engine needs its extra ({exc.name} is missing): "
                "pip install -e '.[whisper]'"
            ) from None
        return WhisperEngine.from_settings(settings)
    if settings.engine == "sphinx":
        try:
            from services.transcriber.engines.sphinx import SphinxEngine
        except ImportError as exc:
            raise EngineUnavailable(
                f"the sphinx engine needs its extra ({exc.name} is missing): "
                "pip install -e '.[sphinx]'"
            ) from None
        return SphinxEngine.from_settings(settings)
    raise EngineUnavailable(f"unknown engine {settings.engine!r}")
