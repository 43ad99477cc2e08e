"""Who is speaking: speaker labels for a session's finals (`diarize=true`).

Each final's audio gets a voice embedding from Resemblyzer's encoder (a 256-number
vector of the voice, not of the words; its 17 MB model ships in the wheel, PyTorch runs
it on the CPU), computed beside the recognition in the decode thread. A session's
speakers are an online clustering of those vectors: a final whose voice is close
enough (cosine similarity >= SAME_VOICE) to a speaker heard before gets that speaker's
label and moves its centre; one that is not starts a new speaker (`S1`, `S2`, ...). An
utterance too short to judge a voice by (under SURE_S) takes the nearest speaker's
label and changes nothing. Within an utterance, windows of 1.6 s show where the voice
changes to another speaker already known (one answers the other without a pause):
its words then get their own speaker's label (a voice not heard before becomes a new
speaker there). What the clustering knows is stored in Redis with the
session (`hark:speakers:{<session>}`), written with each final, so labels stay the same
across a transcriber restart, a move to another transcriber and a resume.

The encoder is loaded at the first session that asks (torch's import and the first
embedding take a few seconds, and about 300 MB): sessions without `diarize` pay
nothing. Measured figures are in bench/RESULTS.md (`python -m bench.diarize`).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
from threadpoolctl import threadpool_limits

from services.transcriber.engines import BadSetting
from shared.config import DIARIZE_EXTRA, diarize_available

log = logging.getLogger(__name__)

RATE = 16_000
# Same voice at or above this (Resemblyzer, cosine): flite's voices measured here, each
# utterance against another's, same voice 0.83-0.95, different voices 0.42-0.75.
SAME_VOICE = 0.8
SURE_S = 1.0  # an utterance shorter than this is labelled, but does not teach
MAX_SPEAKERS = 32  # past this, the nearest: noise must not mint labels without end
# A change of voice inside an utterance (one speaker answers another with no pause):
# seen in windows of 1.6 s (the encoder's own) every 0.25 s; a run of at least
# TURN_WINDOWS windows each at least TURN_SIMILARITY like one known speaker is that
# speaker's turn, a run like none a new speaker's. Measured on the dialogue test set:
# the change shows within 0.3 s of where it is; a single voice's windows were 0.83 or
# more like its speaker, so no single-voice utterance had two runs.
WINDOWS_PER_S = 4
TURN_WINDOWS = 3
TURN_SIMILARITY = 0.75

_lock = threading.Lock()
_encoder: Any = None


def require() -> None:
    """Raise BadSetting (a client's `bad_setting`) where `diarize` cannot be honoured."""
    if not diarize_available():
        raise BadSetting(f"diarize=true needs {DIARIZE_EXTRA}")


def preload() -> None:
    """Load the encoder in the background (a session that diarizes has opened): its
    first final then waits for what is left of the load, not for all of it."""
    if _encoder is None and not _lock.locked():
        threading.Thread(target=_load, name="hark-voice-encoder", daemon=True).start()


def _load() -> Any:
    global _encoder
    with _lock:
        if _encoder is None:
            began = time.monotonic()
            import torch

            with warnings.catch_warnings():  # webrtcvad's pkg_resources: the extra pins it
                warnings.filterwarnings("ignore", "pkg_resources", UserWarning)
                from resemblyzer import VoiceEncoder, audio

            # Resemblyzer's mel spectrogram is librosa's, whose first use compiles
            # librosa's numba kernels: 33 s on this project's machine, on every fresh
            # install (and in a read-only one, on every start). The same spectrogram
            # in numpy (mel_spectrogram, checked against librosa's) takes none of it.
            audio.wav_to_mel_spectrogram = mel_spectrogram

            torch.set_num_threads(1)  # beside the recogniser's threads, on the same cores
            # numpy's BLAS too (the mel filter bank, the similarities): its idle threads
            # spin on the recogniser's cores (see the whisper engine, which does the same).
            threadpool_limits(1, user_api="blas")
            encoder = VoiceEncoder("cpu", verbose=False)
            encoder.embed_utterance(np.zeros(RATE, np.float32))  # its first run compiles
            _encoder = encoder
            log.info("voice encoder loaded in %.1f s", time.monotonic() - began)
        return _encoder


Vector = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class Voice:
    """An utterance's voice: one vector for the whole of it, and one for each window of
    WINDOW_S seconds every 1/WINDOWS_PER_S seconds, centred at `centres` (seconds from
    the utterance's start), which show where the voice changes within it."""

    whole: Vector
    windows: Vector  # one row per window
    centres: np.ndarray[Any, np.dtype[np.float64]]


def mel_spectrogram(wav: np.ndarray[Any, Any]) -> Vector:
    """What Resemblyzer's encoder takes: librosa.feature.melspectrogram's power
    spectrogram of 16 kHz audio (25 ms Hann windows every 10 ms, centred with zero
    padding; 40 bands on the Slaney mel scale, Slaney-normalised), frames by rows."""
    padded = np.pad(np.asarray(wav, np.float32), N_FFT // 2)
    count = 1 + (len(padded) - N_FFT) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:count]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2
    mel: Vector = (power @ _MEL_BASIS.T).astype(np.float32)
    return mel


def _mel_basis(bands: int = 40) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Triangular filters between mel points evenly spaced on the Slaney scale (linear
    below 1 kHz, logarithmic above), each scaled to unit area (Slaney's norm)."""
    linear, knee_mel, log_step = 200 / 3, 15.0, np.log(6.4) / 27

    def to_mel(hz: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        hz = np.asarray(hz, np.float64)
        return np.where(hz < 1000, hz / linear,
                        knee_mel + np.log(np.maximum(hz, 1e-10) / 1000) / log_step)  # fmt: skip

    def to_hz(mel: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return np.where(mel < knee_mel, mel * linear, 1000 * np.exp(log_step * (mel - knee_mel)))

    points = to_hz(np.linspace(to_mel(np.array(0.0)), to_mel(np.array(RATE / 2)), bands + 2))
    freqs = np.linspace(0, RATE / 2, 1 + N_FFT // 2)
    widths = np.diff(points)
    ramps = points[:, None] - freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0, np.minimum(rising, falling))
    basis: np.ndarray[Any, np.dtype[np.float64]] = (
        weights * (2.0 / (points[2:] - points[:-2]))[:, None]
    )
    return basis


N_FFT, HOP = 400, 160  # 25 ms, 10 ms
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
_MEL_BASIS = _mel_basis().astype(np.float32)


def embed(audio: np.ndarray[Any, Any]) -> Voice:
    """The voice of 16 kHz float audio (blocking: a decode thread's)."""
    whole, windows, cuts = _load().embed_utterance(
        np.asarray(audio, np.float32), return_partials=True, rate=WINDOWS_PER_S,
        min_coverage=0.5,
    )  # fmt: skip
    centres = np.array([(c.start + c.stop) / 2 / RATE for c in cuts])
    return Voice(np.asarray(whole, np.float32), np.asarray(windows, np.float32), centres)


@dataclass
class Speakers:
    """One session's speakers: the sum of each one's voice vectors, and how many."""

    sums: list[np.ndarray[Any, np.dtype[np.float32]]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def label(self, voice: Voice | None, seconds: float) -> list[tuple[float, str]]:
        """Who speaks in an utterance `seconds` long with this voice: (from, label) for
        each turn in it, from in seconds of the utterance; one turn but where its voice
        changes within it (see _turns)."""
        turns = self._turns(voice) if voice is not None else []
        if len(turns) > 1:
            return turns  # its whole is a mix of voices: it teaches nothing more
        return [(0.0, self._assign(None if voice is None else voice.whole, seconds))]

    def _turns(self, voice: Voice) -> list[tuple[float, str]]:
        """The turns of an utterance where more than one voice speaks in it: each run of
        at least TURN_WINDOWS windows like one known speaker (similarity at least
        TURN_SIMILARITY), or like none (a new speaker, learnt from those windows)."""
        if not self.sums or len(voice.windows) < 2 * TURN_WINDOWS:
            return []
        centres = np.stack([s / np.linalg.norm(s) for s in self.sums])
        similarity = voice.windows @ centres.T
        who = np.where(similarity.max(axis=1) >= TURN_SIMILARITY, similarity.argmax(axis=1), -1)
        runs: list[list[int]] = []  # [first window, last window, speaker or -1]
        for i, one in enumerate(who):
            if runs and runs[-1][2] == one:
                runs[-1][1] = i
            else:
                runs.append([i, i, int(one)])
        turns = [r for r in runs if r[1] - r[0] + 1 >= TURN_WINDOWS]
        merged: list[list[int]] = []
        for run in turns:
            if merged and merged[-1][2] == run[2]:
                merged[-1][1] = run[1]
            else:
                merged.append(list(run))
        if len(merged) < 2:
            return []
        for run in merged:
            if run[2] < 0:  # a voice not heard before: a new speaker, from its windows
                if len(self.sums) >= MAX_SPEAKERS:
                    return []
                mean = voice.windows[run[0] : run[1] + 1].mean(axis=0)
                self.sums.append((mean / np.linalg.norm(mean)).astype(np.float32))
                self.counts.append(1)
                run[2] = len(self.sums) - 1
        out = [(0.0, f"S{merged[0][2] + 1}")]
        for before, after in itertools.pairwise(merged):
            # Between the last window of one turn and the first of the next.
            at = (voice.centres[before[1]] + voice.centres[after[0]]) / 2
            out.append((round(float(at), 3), f"S{after[2] + 1}"))
        return out

    def _assign(self, voice: np.ndarray[Any, Any] | None, seconds: float) -> str:
        """The label of the speaker of an utterance `seconds` long with this voice."""
        if voice is None:
            return "S1" if not self.sums else f"S{self.counts.index(max(self.counts)) + 1}"
        sure = seconds >= SURE_S
        if self.sums:
            centres = np.stack([s / np.linalg.norm(s) for s in self.sums])
            similarity = centres @ voice
            best = int(np.argmax(similarity))
            if similarity[best] >= SAME_VOICE or not sure or len(self.sums) >= MAX_SPEAKERS:
                if sure:
                    self.sums[best] = self.sums[best] + voice
                    self.counts[best] += 1
                return f"S{best + 1}"
        self.sums.append(np.asarray(voice, np.float32).copy())
        self.counts.append(1)
        return f"S{len(self.sums)}"

    def encode(self) -> bytes:
        packed: bytes = msgpack.packb(
            {"sums": [s.astype("<f4").tobytes() for s in self.sums], "counts": self.counts}
        )
        return packed

    @classmethod
    def decode(cls, data: bytes | None) -> Speakers:
        """A session's speakers as stored (none stored, or unreadable: none yet)."""
        if not data:
            return cls()
        try:
            raw = msgpack.unpackb(data)
            sums = [np.frombuffer(s, "<f4").astype(np.float32) for s in raw["sums"]]
            counts = [int(c) for c in raw["counts"]]
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as exc:
            log.warning("a session's stored speakers are unreadable (%s): starting afresh", exc)
            return cls()
        if len(sums) != len(counts):
            return cls()
        return cls(sums, counts)
