"""The mock engine: one final per chunk, as the original service sent. No model."""

from __future__ import annotations

import time

import numpy as np

from services.transcriber.engines import DEFAULT_OPTIONS, Immediate, Options, Result
from services.transcriber.engines.audio import AudioError


class MockSession(Immediate):
    """Every chunk is its own utterance, final at once."""

    def __init__(self, encoding: str = "pcm_s16le") -> None:
        self._committed = 0
        self._floats = encoding == "pcm_f32le"

    @property
    def committed_seq(self) -> int:
        return self._committed

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        # Refused as the real engines refuse it (the same error), so a client tested
        # against the mock meets it there too.
        floats = self._floats and len(audio) % 4 == 0
        if floats and not np.all(np.isfinite(np.frombuffer(audio, dtype="<f4"))):
            raise AudioError("pcm_f32le audio holds NaN or infinite samples")
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
        self, session_id: str, encoding: str, sample_rate: int,
        options: Options = DEFAULT_OPTIONS,
    ) -> MockSession:  # fmt: skip
        """A session; it hears no speech, so it takes every option and uses none."""
        return MockSession(encoding)
