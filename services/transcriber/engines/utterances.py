"""Utterance engines: voice activity cuts the stream, a recogniser transcribes each cut.

Shared by every engine that recognises whole utterances (whisper, sphinx): while a
person speaks, a partial every `partial_interval` seconds of new speech; at the
end of each utterance (0.6 s of silence, `finalize`, `close`) one final with
start and end times and word timings. A chunk counts as committed only once every
utterance it belongs to has its final, so a restarted actor replays just the audio
of the utterance in progress and rebuilds it.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from faster_whisper.vad import get_vad_model

from services.transcriber.engines import Result, Word
from services.transcriber.engines.audio import Decoder
from services.transcriber.engines.segmenter import RATE, Audio, Segmenter, StreamingVad, Utterance


class Recognizer(Protocol):
    """Speech to text for one utterance's audio (16 kHz float32)."""

    partial_interval: float

    def transcribe(self, audio: Audio, final: bool) -> tuple[str, list[Word]]:
        """Its text, and for a final its words (times relative to the audio)."""
        ...


def vad_model() -> Any:
    """Silero VAD as faster-whisper ships it: an onnxruntime session, shared by sessions."""
    return get_vad_model().session


def open_session(recognizer: Recognizer, vad: Any, encoding: str, rate: int) -> UtteranceSession:
    return UtteranceSession(recognizer, Decoder(encoding, rate), Segmenter(StreamingVad(vad)))


class UtteranceSession:
    """One client session: audio decoding, segmentation, results, what is committed."""

    def __init__(self, recognizer: Recognizer, decoder: Decoder, segmenter: Segmenter) -> None:
        self._recognizer = recognizer
        self._decoder = decoder
        self._segmenter = segmenter
        self._chunks: deque[tuple[int, int]] = deque()  # (seq, samples decoded after it)
        self._decoded = 0
        self._committed = 0
        self._last_seq = 0
        self._base_s: float | None = None  # stream time of this engine session's first sample
        self._partial_at = 0  # segmenter position of the last partial

    @property
    def committed_seq(self) -> int:
        return self._committed

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        if self._base_s is None:
            self._base_s = start_s  # after a replay, the first chunk is not the stream's first
        self._last_seq = seq
        samples = self._decoder.decode(audio)
        self._decoded += len(samples)
        self._chunks.append((seq, self._decoded))
        results = [self._final(u) for u in self._segmenter.feed(samples)]
        segmenter = self._segmenter
        interval = int(self._recognizer.partial_interval * RATE)
        if segmenter.in_speech and segmenter.position - self._partial_at >= interval:
            self._partial_at = segmenter.position
            text, _ = self._recognizer.transcribe(segmenter.current(), final=False)
            if text:
                results.append(Result(seq, text, False))
        self._advance(segmenter.speech_start)
        return [r for r in results if r.text]

    def flush(self) -> list[Result]:
        tail = self._decoder.flush()
        self._decoded += len(tail)
        results = [self._final(u) for u in self._segmenter.feed(tail)]
        last = self._segmenter.flush()
        if last is not None:
            results.append(self._final(last))
        self._advance(self._decoded)  # everything fed so far is covered now
        return [r for r in results if r.text]

    def _final(self, utterance: Utterance) -> Result:
        base = self._base_s or 0.0
        start = base + utterance.start / RATE
        text, words = self._recognizer.transcribe(utterance.audio, final=True)
        timed = tuple((w, round(start + a, 3), round(start + b, 3), p) for w, a, b, p in words)
        self._partial_at = self._segmenter.position
        return Result(self._seq_at(utterance.end), text, True, round(start, 3),
                      round(base + utterance.end / RATE, 3), timed)  # fmt: skip

    def _seq_at(self, sample: int) -> int:
        """The chunk that holds `sample`. Utterances are at least 0.6 s of silence apart,
        so each final gets its own seq, as the gateway's duplicate check needs."""
        for seq, end in self._chunks:
            if end >= sample:
                return seq
        return self._last_seq

    def _advance(self, safe_sample: int) -> None:
        """Commit the chunks whose audio ends before `safe_sample` (nothing there is needed)."""
        while self._chunks and self._chunks[0][1] <= safe_sample:
            self._committed = self._chunks.popleft()[0]
