"""The whisper engine: faster-whisper on the utterances voice activity cuts (see
`utterances`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from faster_whisper import WhisperModel

from services.transcriber.engines import EngineUnavailable, Word
from services.transcriber.engines.model_store import ModelUnavailable, default_cache_dir, resolve
from services.transcriber.engines.segmenter import Audio
from services.transcriber.engines.utterances import UtteranceSession, open_session, vad_model
from shared.config import Settings

log = logging.getLogger(__name__)


class WhisperEngine:
    """One faster-whisper model (CTranslate2, int8 on CPU) and one VAD model per actor."""

    name = "whisper"
    blocking = True

    def __init__(
        self, model: str, language: str | None = "en", partial_interval: float = 1.0,
        beam_size: int = 5, threads: int = 0,
    ) -> None:  # fmt: skip
        self.language = language
        self.partial_interval = partial_interval
        self.beam_size = beam_size
        self.model = WhisperModel(model, device="cpu", compute_type="int8",
                                  cpu_threads=threads or min(4, os.cpu_count() or 1))  # fmt: skip
        self._vad = vad_model()

    @classmethod
    def from_settings(cls, settings: Settings) -> WhisperEngine:
        cache = Path(settings.cache_dir) if settings.cache_dir else default_cache_dir()
        try:
            model = resolve(settings.whisper_model, cache)
        except ModelUnavailable as exc:
            raise EngineUnavailable(str(exc)) from None
        return cls(model, settings.language or None, settings.partial_interval)

    def open_session(self, session_id: str, encoding: str, sample_rate: int) -> UtteranceSession:
        return open_session(self, self._vad, encoding, sample_rate)

    def transcribe(self, audio: Audio, final: bool) -> tuple[str, list[Word]]:
        """Text of the audio, and for a final its words (times relative to the audio)."""
        # A partial is disposable: greedy, one temperature, no timestamps. A final gets the
        # beam and faster-whisper's fallbacks; segments it judges silence (no-speech
        # probability over 0.6 with a low log-probability) are dropped by it either way.
        options: dict[str, object] = (
            {} if final else {"temperature": 0.0, "without_timestamps": True}
        )
        segments, _ = self.model.transcribe(
            audio, language=self.language, beam_size=self.beam_size if final else 1,
            vad_filter=False, condition_on_previous_text=False, word_timestamps=final,
            **options,
        )  # fmt: skip
        texts: list[str] = []
        words: list[Word] = []
        for segment in segments:
            texts.append(segment.text)
            for w in segment.words or []:
                words.append((w.word.strip(), round(w.start, 3), round(w.end, 3),
                              round(w.probability, 3)))  # fmt: skip
        return "".join(texts).strip(), words
