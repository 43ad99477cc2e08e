"""Speaker labels from voice vectors (services/transcriber/speakers.py), without a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.gateway.protocol import AudioFormat, ClientError
from services.transcriber.speakers import SAME_VOICE, Speakers, Voice, mel_spectrogram


def _voice(seed: int, noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """A unit vector for voice `seed`, moved by `noise` (as one utterance differs from
    another of the same voice)."""
    base = np.random.default_rng(seed).normal(size=256)
    if rng is not None:
        base = base + rng.normal(scale=noise, size=256) * np.linalg.norm(base) / 16
    return (base / np.linalg.norm(base)).astype(np.float32)


def _said(*voices: int, each_s: float = 2.0, noise: float = 0.0, seed: int = 0) -> Voice:
    """An utterance in which `voices` speak in turn, `each_s` each: its whole vector (of
    the first voice: the encoder's average of a mix) and windows every 0.25 s."""
    rng = np.random.default_rng(seed)
    per_voice = int(each_s * 4)
    windows = np.stack([_voice(v, noise, rng) for v in voices for _ in range(per_voice)])
    centres = np.arange(len(windows)) * 0.25 + 0.8
    return Voice(_voice(voices[0]), windows, centres)


def _label(speakers: Speakers, voice: np.ndarray | None, seconds: float) -> str:
    if voice is None:
        return speakers.label(None, seconds)[0][1]
    (turn,) = speakers.label(Voice(voice, voice[None, :], np.array([0.8])), seconds)
    return turn[1]


def test_voices_heard_again_keep_their_labels_and_new_ones_get_new_labels() -> None:
    rng = np.random.default_rng(0)
    speakers = Speakers()
    order = [1, 2, 1, 3, 2, 1, 3, 3, 2]
    labels = [_label(speakers, _voice(v, 0.3, rng), 3.0) for v in order]
    assert labels == ["S1", "S2", "S1", "S3", "S2", "S1", "S3", "S3", "S2"]
    assert float(_voice(1, 0.3, rng) @ _voice(1, 0.3, rng)) >= SAME_VOICE  # the premise


def test_a_short_utterance_is_labelled_but_teaches_nothing() -> None:
    speakers = Speakers()
    assert _label(speakers, _voice(1), 0.4) == "S1"  # nobody known: a new speaker anyway
    assert _label(speakers, _voice(2), 0.4) == "S1"  # too short to start a second
    assert speakers.counts == [1]
    assert _label(speakers, _voice(2), 2.0) == "S2"
    assert _label(speakers, None, 1.0) in ("S1", "S2")  # no voice: the likeliest


def test_what_a_session_knows_survives_a_round_trip_through_redis_bytes() -> None:
    speakers = Speakers()
    for v in (1, 2, 1):
        _label(speakers, _voice(v), 2.0)
    again = Speakers.decode(speakers.encode())
    assert again.counts == [2, 1]
    assert _label(again, _voice(2), 2.0) == "S2" and _label(again, _voice(4), 2.0) == "S3"
    assert Speakers.decode(None).counts == [] and Speakers.decode(b"\x00junk").counts == []


def test_a_known_voice_that_answers_without_a_pause_gets_its_own_words() -> None:
    speakers = Speakers()
    for v in (1, 2):
        _label(speakers, _voice(v), 3.0)
    turns = speakers.label(_said(2, 1, noise=0.2), 4.0)
    assert [label for _, label in turns] == ["S2", "S1"]
    assert abs(turns[1][0] - (0.8 + 7.5 * 0.25)) < 0.01  # between the 8th and 9th windows
    assert speakers.label(_said(1, noise=0.2, each_s=4.0), 4.0) == [(0.0, "S1")]
    assert speakers.counts == [2, 1]  # the mixed utterance taught nothing; the single one did
    # A blip of another voice shorter than a turn is no turn.
    blip = _said(1, 2, 1, each_s=0.5)
    assert len(speakers.label(blip, 1.5)) == 1


def test_diarize_without_the_extra_is_a_bad_setting_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert AudioFormat().updated({"diarize": "true"}).diarize  # installed here (dev extra)
    monkeypatch.setattr("services.gateway.protocol.diarize_available", lambda: False)
    with pytest.raises(ClientError) as refused:
        AudioFormat().updated({"diarize": "true"})
    assert refused.value.code == "bad_setting" and ".[diarize]" in refused.value.message
    assert not AudioFormat().updated({"diarize": "false"}).diarize


def test_the_mel_spectrogram_is_librosas() -> None:
    # tests/data/mel_reference.npz: librosa.feature.melspectrogram(y=wav, sr=16000,
    # n_fft=400, hop_length=160, n_mels=40).T of this noise, as Resemblyzer computes it
    # (librosa 0.11; kept as a file: librosa's first use compiles for half a minute).
    wav = (np.random.default_rng(7).normal(size=8000) * 0.1).astype(np.float32)
    expected = np.load(Path(__file__).parents[1] / "data" / "mel_reference.npz")["mel"]
    got = mel_spectrogram(wav)
    assert got.shape == expected.shape == (51, 40)
    assert np.allclose(got, expected, rtol=1e-5, atol=1e-7)
