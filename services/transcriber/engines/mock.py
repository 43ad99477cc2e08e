"""The mock engine: one final per chunk, as the original service sent. No model."""

from __future__ import annotations

import time

from services.transcriber.engines import Immediate, Result


class MockSession(Immediate):
    """Every chunk is its own utterance, final at once."""

    def __init__(self) -> None:
        self._committed = 0

    @property
    def committed_seq(self) -> int:
        return self._committed

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        self._committed = seq
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        return [Result(seq, f"Transcribed: {stamp} (size: {len(audio)} bytes)", True)]

    def flush(self) -> list[Result]:
        return []


class MockEngine:
    """For load tests and for the original service's behaviour."""

    name = "mock"
    blocking = False

    def open_session(
        self, session_id: str, encoding: str, sample_rate: int, end_silence: float | None = None
    ) -> MockSession:
        return MockSession()
