"""Who is speaking: speaker labels for a session's finals (`diarize=true`).

Each final's audio gets a voice embedding from Resemblyzer's encoder (a 256-number
vector of the voice, not of the words; its 17 MB model ships in the wheel, PyTorch runs
it on the CPU), computed beside the recognition in the decode thread. A session's
speakers are an online clustering of those vectors: a final whose voice is close
enough (cosine similarity >= SAME_VOICE) to a speaker heard before gets that speaker's
label and moves its centre; one that is not starts a new speaker (`S1`, `S2`, ...). An
utterance too short to judge a voice by (under SURE_S) takes the nearest speaker's
label and changes nothing. What the clustering knows is stored in Redis with the
session (`hark:speakers:{<session>}`), written with each final, so labels stay the same
across a transcriber restart, a move to another transcriber and a resume.

The encoder is loaded at the first session that asks (torch's import and the first
embedding take a few seconds, and about 300 MB): sessions without `diarize` pay
nothing. Measured figures are in bench/RESULTS.md (`python -m bench.diarize`).
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from services.transcriber.engines import BadSetting
from shared.config import DIARIZE_EXTRA, diarize_available

log = logging.getLogger(__name__)

RATE = 16_000
# Same voice at or above this (Resemblyzer, cosine): flite's voices measured here, each
# utterance against another's, same voice 0.83-0.95, different voices 0.42-0.75.
SAME_VOICE = 0.8
SURE_S = 1.0  # an utterance shorter than this is labelled, but does not teach
MAX_SPEAKERS = 32  # past this, the nearest: noise must not mint labels without end

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
                from resemblyzer import VoiceEncoder

            torch.set_num_threads(1)  # beside the recogniser's threads, on the same cores
            encoder = VoiceEncoder("cpu", verbose=False)
            encoder.embed_utterance(np.zeros(RATE, np.float32))  # its first run compiles
            _encoder = encoder
            log.info("voice encoder loaded in %.1f s", time.monotonic() - began)
        return _encoder


def embed(audio: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The voice of 16 kHz float audio: a unit vector (blocking: a decode thread's)."""
    vector = _load().embed_utterance(np.asarray(audio, np.float32))
    return np.asarray(vector, np.float32)


@dataclass
class Speakers:
    """One session's speakers: the sum of each one's voice vectors, and how many."""

    sums: list[np.ndarray[Any, np.dtype[np.float32]]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def assign(self, voice: np.ndarray[Any, Any] | None, seconds: float) -> str:
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
