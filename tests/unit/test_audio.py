"""Decoding client audio to 16 kHz float32: formats, chunk boundaries, resampling, errors."""

from __future__ import annotations

import numpy as np
import pytest

from services.transcriber.engines.audio import AudioError, Decoder


def tone(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def s16(samples: np.ndarray) -> bytes:
    return (samples * 32767).astype("<i2").tobytes()


def in_chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_s16_at_16k_passes_through_at_the_same_length_and_scale() -> None:
    samples = tone(16000, 0.5)
    out = Decoder("pcm_s16le", 16000).decode(s16(samples))
    assert out.dtype == np.float32 and len(out) == len(samples)
    assert np.max(np.abs(out - samples)) < 1e-3


def test_a_sample_split_across_chunks_is_rejoined() -> None:
    data = s16(tone(16000, 0.1))
    decoder = Decoder("pcm_s16le", 16000)
    out = np.concatenate([decoder.decode(c) for c in in_chunks(data, 333)])  # odd sizes
    assert len(out) == len(data) // 2
    assert np.array_equal(out, Decoder("pcm_s16le", 16000).decode(data))


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_other_rates_resample_to_16k_and_keep_the_pitch(rate: int) -> None:
    data = s16(tone(rate, 1.0, freq=440.0))
    decoder = Decoder("pcm_s16le", rate)
    chunk = rate // 10 * 2  # 100 ms frames, as clients send
    out = np.concatenate([*(decoder.decode(c) for c in in_chunks(data, chunk)), decoder.flush()])
    assert abs(len(out) - 16000) <= 16
    peak = np.argmax(np.abs(np.fft.rfft(out))) * 16000 / len(out)
    assert abs(peak - 440.0) < 5.0


def test_resampling_in_chunks_matches_resampling_at_once() -> None:
    data = s16(tone(44100, 0.5))
    whole = Decoder("pcm_s16le", 44100)
    once = np.concatenate([whole.decode(data), whole.flush()])
    pieces = Decoder("pcm_s16le", 44100)
    chunked = np.concatenate([*(pieces.decode(c) for c in in_chunks(data, 8820)), pieces.flush()])
    assert len(once) == len(chunked)
    assert np.max(np.abs(once - chunked)) < 1e-4


def test_f32_passes_through() -> None:
    samples = tone(16000, 0.2)
    out = Decoder("pcm_f32le", 16000).decode(samples.astype("<f4").tobytes())
    assert np.array_equal(out, samples)


@pytest.mark.parametrize(
    ("samples", "complaint"),
    [(np.array([0.1, np.nan], "<f4"), "NaN"), (np.array([0.1, 1e6], "<f4"), "outside")],
)
def test_f32_garbage_is_refused_with_a_reason(samples: np.ndarray, complaint: str) -> None:
    with pytest.raises(AudioError, match=complaint) as err:
        Decoder("pcm_f32le", 16000).decode(samples.tobytes())
    assert err.value.code == "bad_audio"


@pytest.mark.parametrize(("encoding", "rate"), [("mp3", 16000), ("pcm_s16le", 4000)])
def test_unusable_format_is_refused(encoding: str, rate: int) -> None:
    with pytest.raises(AudioError):
        Decoder(encoding, rate)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_audio_after_a_flush_and_a_second_flush_resamples_on(rate: int) -> None:
    # finalize, more audio, close, then the end that follows: each flush gives the
    # resampler its last input, and soxr refused any after it ("Input after last input").
    decoder = Decoder("pcm_s16le", rate)
    first = np.concatenate([decoder.decode(s16(tone(rate, 0.5))), decoder.flush()])
    second = np.concatenate([decoder.decode(s16(tone(rate, 0.5))), decoder.flush()])
    assert len(decoder.flush()) == 0
    assert abs(len(first) - 8000) <= 2 and abs(len(second) - 8000) <= 2
