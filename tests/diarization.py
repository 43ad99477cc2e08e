"""How well speaker labels match who spoke: for the tests and bench.diarize.

Labels are names a diarizer makes up (`S1`, `S2`, ...), so each measure first maps
them onto the true speakers in the way that agrees best (every one-to-one mapping is
tried: there are few speakers)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from tests.speech import Turn

FRAME_S = 0.01


def _speaker_at(turns: Sequence[Turn], at: float) -> str | None:
    for turn in turns:
        if turn.start <= at < turn.end:
            return turn.speaker
    return None


def _best(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """The one-to-one mapping of labels onto speakers under which most pairs agree."""
    labels = sorted({label for label, _ in pairs})
    speakers = sorted({speaker for _, speaker in pairs})
    best: tuple[int, dict[str, str]] = (-1, {})
    pad = [f"?{i}" for i in range(max(0, len(labels) - len(speakers)))]
    for order in itertools.permutations(speakers + pad, len(labels)):
        mapping = dict(zip(labels, order, strict=True))
        agree = sum(1 for label, speaker in pairs if mapping[label] == speaker)
        if agree > best[0]:
            best = (agree, mapping)
    return best[1]


def word_accuracy(
    turns: Sequence[Turn], finals: Sequence[dict[str, Any]], which: set[int] | None = None
) -> tuple[float, int]:
    """The share of words (in the turns numbered `which`, 1-based; all by default) whose
    speaker label, mapped, is who spoke at the word's middle; and how many were judged."""
    pairs: list[tuple[str, str]] = []
    judged: list[bool] = []
    for final in finals:
        for word in final.get("words", []):
            middle = (word["start"] + word["end"]) / 2
            speaker = _speaker_at(turns, middle)
            if speaker is None:
                continue
            number = next(i for i, t in enumerate(turns, 1) if t.start <= middle < t.end)
            pairs.append((word.get("speaker", "-"), speaker))
            judged.append(which is None or number in which)
    mapping = _best(pairs)
    counted = [(label, speaker) for (label, speaker), j in zip(pairs, judged, strict=True) if j]
    right = sum(1 for label, speaker in counted if mapping[label] == speaker)
    return (right / len(counted) if counted else 0.0), len(counted)


def error_rate(turns: Sequence[Turn], finals: Sequence[dict[str, Any]], seconds: float) -> float:
    """The diarization error rate, on 10 ms frames: speech with no final (missed), finals
    over silence (false alarm) and speech under the wrong speaker (confusion), over the
    speech. A final spans its utterance's start to end, each stretch of it its word's
    speaker (no overlap of speakers here)."""
    frames = int(seconds / FRAME_S) + 1
    truth = np.full(frames, "", dtype=object)
    said = np.full(frames, "", dtype=object)
    for turn in turns:
        truth[int(turn.start / FRAME_S) : int(turn.end / FRAME_S)] = turn.speaker
    for final in finals:
        if final.get("start") is None:
            continue
        # Each word's speaker from the end of the word before (the final's start) to its
        # own end; the last word's to the final's end.
        at = final["start"]
        for word in final.get("words", []):
            said[int(at / FRAME_S) : int(word["end"] / FRAME_S)] = word.get(
                "speaker", final.get("speaker", "-"))  # fmt: skip
            at = max(at, word["end"])
        said[int(at / FRAME_S) : int(final["end"] / FRAME_S)] = (
            final["words"][-1].get("speaker", "-") if final.get("words")
            else final.get("speaker", "-"))  # fmt: skip
    both = [(str(h), str(t)) for h, t in zip(said, truth, strict=True) if h and t]
    mapping = _best(both) if both else {}
    speech = sum(1 for t in truth if t)
    missed = sum(1 for h, t in zip(said, truth, strict=True) if t and not h)
    false_alarm = sum(1 for h, t in zip(said, truth, strict=True) if h and not t)
    confused = sum(1 for h, t in both if mapping.get(h) != t)
    return (missed + false_alarm + confused) / speech
