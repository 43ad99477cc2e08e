"""A session's audio as speech engines want it: mono float32 samples at 16 kHz.

Clients send `pcm_s16le` at any rate from 8 to 48 kHz, or `pcm_f32le`. A chunk may
end in the middle of a sample (clients cut frames where they like); the stray
bytes wait for the next chunk. Resampling keeps its filter state across chunks,
so a stream cut into 100 ms pieces resamples as one signal, and replaying the same
chunks after a crash gives the same samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import soxr

from services.transcriber.engines import BadInput
from shared.config import SAMPLE_WIDTHS

TARGET_RATE = 16_000


class AudioError(BadInput):
    """Audio that cannot be decoded."""


class Decoder:
    """One session's audio converter; feed chunks in order, then `flush()`."""

    def __init__(self, encoding: str, sample_rate: int) -> None:
        if encoding not in SAMPLE_WIDTHS:
            raise AudioError(f"encoding {encoding!r} is not one of {', '.join(SAMPLE_WIDTHS)}")
        if not 8000 <= sample_rate <= 48000:
            raise AudioError(f"sample rate {sample_rate} is outside 8000..48000")
        self.encoding = encoding
        self.width = SAMPLE_WIDTHS[encoding]
        self.sample_rate = sample_rate
        self._carry = b""
        self._resampler: Any = None
        if sample_rate != TARGET_RATE:
            self._resampler = soxr.ResampleStream(sample_rate, TARGET_RATE, 1, dtype="float32")

    def decode(self, data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The 16 kHz samples this chunk completes (possibly none)."""
        data = self._carry + data
        cut = len(data) - len(data) % self.width
        self._carry = data[cut:]
        samples = self._samples(data[:cut])
        if self._resampler is None:
            return samples
        out: np.ndarray[Any, np.dtype[np.float32]] = self._resampler.resample_chunk(samples)
        return out

    def flush(self) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The resampler's tail at the end of an utterance (finalize, close; a stray
        partial sample is dropped). Audio may follow: it starts a fresh resampler, as
        it would in a replay after a crash, where the flushed audio is committed."""
        self._carry = b""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        empty = np.zeros(0, dtype=np.float32)
        out: np.ndarray[Any, np.dtype[np.float32]] = self._resampler.resample_chunk(
            empty, last=True
        )
        # A stream given its last input takes no more ("Input after last input").
        self._resampler = soxr.ResampleStream(self.sample_rate, TARGET_RATE, 1, dtype="float32")
        return out

    def _samples(self, data: bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
        if self.encoding == "pcm_s16le":
            ints = np.frombuffer(data, dtype="<i2")
            return (ints.astype(np.float32) / 32768.0).astype(np.float32)
        floats = np.frombuffer(data, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(floats)):
            raise AudioError("pcm_f32le audio holds NaN or infinite samples")
        if floats.size and float(np.max(np.abs(floats))) > 64.0:
            raise AudioError("pcm_f32le samples far outside -1..1: is this really float audio?")
        return floats
