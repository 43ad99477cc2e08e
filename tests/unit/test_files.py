"""The file endpoint's own parts: where a long file is cut, and its answers' shapes."""

from __future__ import annotations

import itertools
import time

import numpy as np

from services.gateway.files import RATE, captions, pieces
from shared.messages import Transcript


def _talk(seconds: float, pauses: list[float]) -> np.ndarray:
    """Noise as loud as speech, with 0.5 s of silence starting at each of `pauses`."""
    rng = np.random.default_rng(7)
    pcm = rng.integers(-8000, 8000, int(seconds * RATE)).astype(np.int16)
    for at in pauses:
        pcm[int(at * RATE) : int((at + 0.5) * RATE)] = 0
    return pcm


def test_a_long_file_is_cut_in_its_pauses_near_each_minute() -> None:
    pcm = _talk(200, pauses=[20.0, 55.3, 112.0, 171.7])
    cuts = pieces(pcm)
    assert cuts[0][0] == 0 and cuts[-1][1] == len(pcm)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(cuts))  # nothing lost
    inner = [end / RATE for _, end in cuts[:-1]]
    # In the pauses 50-60 s after each start (the one at 20 s is too early to use).
    assert len(inner) == 2
    assert 55.3 <= inner[0] <= 55.8 and 55.3 + 50 <= inner[1] <= 55.3 + 60, inner
    assert 112.0 <= inner[1] <= 112.5, inner


def test_a_file_without_pauses_is_cut_anyway_and_a_short_one_not_at_all() -> None:
    assert pieces(_talk(80, pauses=[])) == [(0, 80 * RATE)]  # up to 1.5 pieces: one
    cuts = pieces(_talk(300, pauses=[]))
    assert len(cuts) in (4, 5) and all(50 * RATE <= b - a <= 90 * RATE for a, b in cuts)


def test_an_hour_is_cut_in_well_under_a_second() -> None:
    pcm = _talk(3600, pauses=[])
    began = time.monotonic()
    cuts = pieces(pcm)
    took = time.monotonic() - began
    assert len(cuts) >= 55
    assert took < 0.5, took  # a whole-file convolution took minutes (and hung the gateway)


def test_captions_are_timed_by_the_finals() -> None:
    finals = [
        Transcript("s", "c", 3, "Hello there.", True, "t", 0.0, start=0.25, end=1.5),
        Transcript("s", "c", 9, "Second one.", True, "t", 0.0, start=61.0, end=3725.042),
    ]
    srt = captions(finals, "srt")
    assert srt.startswith("1\n00:00:00,250 --> 00:00:01,500\nHello there.\n")
    assert "2\n00:01:01,000 --> 01:02:05,042\nSecond one.\n" in srt
    vtt = captions(finals, "vtt")
    assert vtt.startswith("WEBVTT\n\n00:00:00.250 --> 00:00:01.500\nHello there.\n")
