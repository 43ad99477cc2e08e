"""Speaker labels from voice vectors (services/transcriber/speakers.py), without a model."""

from __future__ import annotations

import numpy as np
import pytest

from services.gateway.protocol import AudioFormat, ClientError
from services.transcriber.speakers import SAME_VOICE, Speakers


def _voice(seed: int, noise: float = 0.0, rng: np.random.Generator | None = None) -> np.ndarray:
    """A unit vector for voice `seed`, moved by `noise` (as one utterance differs from
    another of the same voice)."""
    base = np.random.default_rng(seed).normal(size=256)
    if rng is not None:
        base = base + rng.normal(scale=noise, size=256) * np.linalg.norm(base) / 16
    return (base / np.linalg.norm(base)).astype(np.float32)


def test_voices_heard_again_keep_their_labels_and_new_ones_get_new_labels() -> None:
    rng = np.random.default_rng(0)
    speakers = Speakers()
    order = [1, 2, 1, 3, 2, 1, 3, 3, 2]
    labels = [speakers.assign(_voice(v, 0.3, rng), 3.0) for v in order]
    assert labels == ["S1", "S2", "S1", "S3", "S2", "S1", "S3", "S3", "S2"]
    assert float(_voice(1, 0.3, rng) @ _voice(1, 0.3, rng)) >= SAME_VOICE  # the premise


def test_a_short_utterance_is_labelled_but_teaches_nothing() -> None:
    speakers = Speakers()
    assert speakers.assign(_voice(1), 0.4) == "S1"  # nobody known: a new speaker anyway
    assert speakers.assign(_voice(2), 0.4) == "S1"  # too short to start a second
    assert speakers.counts == [1]
    assert speakers.assign(_voice(2), 2.0) == "S2"
    assert speakers.assign(None, 1.0) in ("S1", "S2")  # no voice: the likeliest


def test_what_a_session_knows_survives_a_round_trip_through_redis_bytes() -> None:
    speakers = Speakers()
    for v in (1, 2, 1):
        speakers.assign(_voice(v), 2.0)
    again = Speakers.decode(speakers.encode())
    assert again.counts == [2, 1]
    assert again.assign(_voice(2), 2.0) == "S2" and again.assign(_voice(4), 2.0) == "S3"
    assert Speakers.decode(None).counts == [] and Speakers.decode(b"\x00junk").counts == []


def test_diarize_without_the_extra_is_a_bad_setting_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert AudioFormat().updated({"diarize": "true"}).diarize  # installed here (dev extra)
    monkeypatch.setattr("services.gateway.protocol.diarize_available", lambda: False)
    with pytest.raises(ClientError) as refused:
        AudioFormat().updated({"diarize": "true"})
    assert refused.value.code == "bad_setting" and ".[diarize]" in refused.value.message
    assert not AudioFormat().updated({"diarize": "false"}).diarize
