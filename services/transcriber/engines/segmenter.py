"""Voice activity over a stream: where utterances start and end.

Silero VAD as faster-whisper ships it, run on 512-sample windows (32 ms at 16 kHz)
as audio arrives. faster-whisper's own wrapper resets the model's state and the
window context on every call, which suits whole files; here both carry over from
one chunk to the next, so a stream cut into 100 ms pieces is judged as one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

WINDOW = 512
CONTEXT = 64
RATE = 16_000
TAIL_WINDOWS = 6  # silence kept after speech (about 0.2 s): recognisers like a little

Audio = np.ndarray[Any, np.dtype[np.float32]]


class StreamingVad:
    """Speech probability per 512-sample window, with state kept across calls."""

    def __init__(self, session: Any) -> None:
        self._session = session  # an onnxruntime InferenceSession of silero_vad_v6
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)

    def __call__(self, windows: Audio) -> Audio:
        """`windows`: shape (n, 512). Returns n probabilities."""
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        contexts = np.concatenate([self._context[None, :], windows[:-1, -CONTEXT:]])
        batch = np.concatenate([contexts, windows], axis=1).astype(np.float32)
        probs, self._h, self._c = self._session.run(
            None, {"input": batch, "h": self._h, "c": self._c}
        )
        self._context = windows[-1, -CONTEXT:].copy()
        out: Audio = np.asarray(probs, dtype=np.float32).reshape(-1)
        return out


@dataclass(frozen=True)
class Utterance:
    """A stretch of speech: its audio and where it lies in the stream (samples)."""

    audio: Audio
    start: int
    end: int
    forced: bool = False  # cut for length, in the middle of speech (no pause)


class Segmenter:
    """Cuts a 16 kHz stream into utterances.

    Speech starts at a window of probability >= `threshold` (with `preroll_s` of the
    audio before it, so the first syllable is whole) and ends after `silence_s` of
    windows below `threshold - 0.15`. Speech that goes on for `max_s` without such a
    pause is cut at its quietest window of the last `CUT_SEARCH_S` (most often a breath
    between words), at least `CUT_GUARD_S` back, and the rest begins the next utterance:
    a monologue becomes finals of at most `max_s`, none of them dropped or held.
    """

    CUT_SEARCH_S = 5.0
    CUT_GUARD_S = 1.0

    def __init__(
        self,
        vad: StreamingVad,
        threshold: float = 0.5,
        silence_s: float = 0.6,
        preroll_s: float = 0.3,
        max_s: float = 25.0,
    ) -> None:
        self._vad = vad
        self._on = threshold
        self._off = max(threshold - 0.15, 0.01)
        self._silence_windows = max(1, int(silence_s * RATE / WINDOW))
        self._max_samples = int(max_s * RATE)
        self._preroll: deque[tuple[Audio, float]] = deque(
            maxlen=max(1, int(preroll_s * RATE / WINDOW))
        )
        self._pending = np.zeros(0, dtype=np.float32)  # less than a window, not judged yet
        self._speech: list[Audio] = []  # windows of the utterance in progress
        self._probs: list[float] = []  # their speech probabilities
        self._start = 0
        self._quiet = 0  # windows of silence at the end of the utterance in progress
        self.position = 0  # samples taken so far (judged, or dropped by a flush)

    @property
    def in_speech(self) -> bool:
        return bool(self._speech)

    @property
    def speech_start(self) -> int:
        """Where the utterance in progress starts (preroll included); `position` if none."""
        return self._start if self._speech else self.position - WINDOW * len(self._preroll)

    def settled(self) -> tuple[int, int] | None:
        """Where the utterance in progress will lie if it ends at this silence (its
        start and length in samples), once that is known: after TAIL_WINDOWS of silence
        its audio no longer changes unless speech resumes. None otherwise."""
        if not self._speech or self._quiet < TAIL_WINDOWS:
            return None
        return self._start, self._kept() * WINDOW

    def settled_audio(self) -> Audio:
        """The audio of `settled()`: what its final will decode if speech does not resume."""
        return np.concatenate(self._speech[: self._kept()])

    def _kept(self) -> int:
        """Windows of the utterance in progress a cut now keeps (TAIL_WINDOWS of its
        silence, trimmed of the rest)."""
        return max(0, len(self._speech) - max(0, self._quiet - TAIL_WINDOWS))

    def current(self) -> Audio:
        """The audio of the utterance in progress, for a partial result."""
        if not self._speech:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(self._speech)

    def feed(self, samples: Audio) -> list[Utterance]:
        """The utterances that this audio completes."""
        data = np.concatenate([self._pending, samples])
        whole = len(data) - len(data) % WINDOW
        self._pending = data[whole:]
        windows = data[:whole].reshape(-1, WINDOW)
        done: list[Utterance] = []
        for window, prob in zip(windows, self._vad(windows).tolist(), strict=True):
            self.position += WINDOW
            if not self._speech:
                if prob >= self._on:
                    self._start = self.position - WINDOW * (len(self._preroll) + 1)
                    self._speech = [w for w, _ in self._preroll] + [window]
                    self._probs = [p for _, p in self._preroll] + [prob]
                    self._preroll.clear()
                    self._quiet = 0
                else:
                    self._preroll.append((window, prob))
                continue
            self._speech.append(window)
            self._probs.append(prob)
            self._quiet = self._quiet + 1 if prob < self._off else 0
            if self._quiet >= self._silence_windows:
                done.append(self._close())
            elif self.position - self._start >= self._max_samples:
                done.append(self._cut())
        return done

    def flush(self) -> Utterance | None:
        """End the utterance in progress now (finalize, close, end of stream)."""
        if len(self._pending) and self._speech:
            self._speech.append(self._pending)
            self._probs.append(0.0)
            if self._quiet:  # a scrap of the silence: trimmed with it, so a final
                self._quiet += 1  # decoded ahead of this cut (`settled`) still fits
        self.position += len(self._pending)  # kept in step with the samples taken
        self._pending = np.zeros(0, dtype=np.float32)
        # A flush is a cut: what follows starts afresh, as a replay after it would.
        self._preroll.clear()
        return self._close() if self._speech else None

    def _close(self) -> Utterance:
        keep = self._speech[: self._kept()]
        audio = np.concatenate(keep) if keep else np.zeros(0, dtype=np.float32)
        utterance = Utterance(audio, self._start, self._start + len(audio))
        self._speech, self._probs = [], []
        self._quiet = 0
        return utterance

    def _cut(self) -> Utterance:
        """End an utterance at `max_s` at its quietest recent window; the windows after
        that one stay, as the start of the next utterance."""
        n = len(self._speech)
        guard = int(self.CUT_GUARD_S * RATE / WINDOW)
        lo = max(1, n - int(self.CUT_SEARCH_S * RATE / WINDOW))
        hi = max(lo + 1, n - guard)
        at = min(range(lo, hi), key=self._probs.__getitem__) + 1  # the quiet window stays
        audio = np.concatenate(self._speech[:at])
        utterance = Utterance(audio, self._start, self._start + len(audio), forced=True)
        self._speech, self._probs = self._speech[at:], self._probs[at:]
        self._start += len(audio)
        self._quiet = 0
        return utterance
