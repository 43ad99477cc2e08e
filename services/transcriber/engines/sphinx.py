"""The sphinx engine: pocketsphinx with the US English model its wheel ships.

Small and fast, less accurate than whisper; on the utterances voice activity cuts
(see `utterances`). English only.
"""

from __future__ import annotations

import numpy as np
from pocketsphinx import Decoder

from services.transcriber.engines import Word
from services.transcriber.engines.segmenter import RATE, Audio
from services.transcriber.engines.utterances import UtteranceSession, open_session, vad_model
from shared.config import Settings

FRAMES_PER_S = 100  # pocketsphinx's default frame rate


class SphinxEngine:
    """One pocketsphinx decoder per actor; utterances are decoded one at a time."""

    name = "sphinx"
    blocking = True

    def __init__(self, partial_interval: float = 1.0, end_silence: float = 0.6) -> None:
        self.partial_interval = partial_interval
        self.end_silence = end_silence
        self._decoder = Decoder(samprate=RATE)
        self._vad = vad_model()

    @classmethod
    def from_settings(cls, settings: Settings) -> SphinxEngine:
        return cls(settings.partial_interval, settings.end_silence)

    def open_session(self, session_id: str, encoding: str, sample_rate: int) -> UtteranceSession:
        return open_session(self, self._vad, encoding, sample_rate, self.end_silence)

    def transcribe(self, audio: Audio, final: bool) -> tuple[str, list[Word]]:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        decoder = self._decoder
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        if hyp is None:
            return "", []
        words: list[Word] = []
        if final:
            for seg in decoder.seg():
                # Markers (<s>, <sil>, [NOISE]) are no words; "word(2)" is a variant.
                if seg.word.startswith(("<", "[")):
                    continue
                words.append((seg.word.split("(")[0], round(seg.start_frame / FRAMES_PER_S, 3),
                              round((seg.end_frame + 1) / FRAMES_PER_S, 3),
                              round(float(seg.prob), 3)))  # fmt: skip
        return str(hyp.hypstr), words
