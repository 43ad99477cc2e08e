"""Utterance engines: voice activity cuts the stream, a recogniser transcribes each cut.

Shared by every engine that recognises whole utterances (whisper, sphinx). Taking
audio in is cheap (resampling, voice activity); recognition is owed as jobs that the
actor's scheduler runs: one final per utterance (cut by `silence_s` of silence, the
maximum length, `finalize` or `close`), with start and end times and word timings,
and while a person speaks a partial of the utterance as it stands, at most one per
`partial_interval` seconds of new speech. A chunk counts as committed only once every
utterance it belongs to has its final, so a restarted actor replays just the audio
of the finals still owed and of the utterance in progress, and rebuilds them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from faster_whisper.vad import get_vad_model

from services.transcriber.engines import (
    DEFAULT_OPTIONS,
    SPEECH_STARTED,
    UTTERANCE_END,
    Decoded,
    Job,
    Options,
    Result,
)
from services.transcriber.engines.audio import Decoder
from services.transcriber.engines.segmenter import RATE, Audio, Segmenter, StreamingVad, Utterance

log = logging.getLogger(__name__)


class Recognizer(Protocol):
    """Speech to text for one utterance's audio (16 kHz float32)."""

    partial_interval: float

    def transcribe(self, audio: Audio, final: bool, options: Options = DEFAULT_OPTIONS) -> Decoded:
        """Its text, and for a final its words (times relative to the audio)."""
        ...


def vad_model() -> Any:
    """Silero VAD as faster-whisper ships it: an onnxruntime session, shared by sessions."""
    return get_vad_model().session


def open_session(
    recognizer: Recognizer, vad: Any, encoding: str, rate: int, end_silence: float = 0.6,
    options: Options = DEFAULT_OPTIONS,
) -> UtteranceSession:  # fmt: skip
    """A session whose utterances end after `end_silence` seconds of silence (the
    client's `options.end_silence` where it chose one)."""
    segmenter = Segmenter(StreamingVad(vad), silence_s=options.end_silence or end_silence)
    return UtteranceSession(recognizer, Decoder(encoding, rate), segmenter, options)


@dataclass(slots=True)
class _Owed:
    """An utterance cut, its final not yet returned."""

    utterance: Utterance
    seq: int  # the chunk its end lies in: the final's seq
    since: float  # when it was cut (monotonic)


class UtteranceSession:
    """One client session: audio decoding, segmentation, the finals owed, what is
    committed."""

    def __init__(
        self, recognizer: Recognizer, decoder: Decoder, segmenter: Segmenter,
        options: Options = DEFAULT_OPTIONS,
    ) -> None:  # fmt: skip
        self._recognizer = recognizer
        self._options = options
        self._speaking = False  # speech_started said for the speech in progress
        self._decoder = decoder
        self._segmenter = segmenter
        self._chunks: deque[tuple[int, int]] = deque()  # (seq, samples decoded after it)
        self._decoded = 0
        self._committed = 0
        self._last_seq = 0
        self._sealed = 0  # the last chunk a flush ended: no utterance ends in it any more
        self._base_s: float | None = None  # stream time of this engine session's first sample
        self._partial_at = 0  # segmenter position of the last partial (or final)
        self._partial_time = time.monotonic()  # when the last partial was handed out
        self._owed: deque[_Owed] = deque()
        self._busy = False  # the oldest owed final is being decoded
        self._cut = 0
        self._done = 0

    @property
    def committed_seq(self) -> int:
        return self._committed

    @property
    def finals_cut(self) -> int:
        return self._cut

    @property
    def finals_done(self) -> int:
        return self._done

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        if self._base_s is None:
            self._base_s = start_s  # after a replay, the first chunk is not the stream's first
        self._last_seq = seq
        samples = self._decoder.decode(audio)
        self._decoded += len(samples)
        self._chunks.append((seq, self._decoded))
        events: list[Result] = []
        for utterance in self._segmenter.feed(samples):
            self._owe(utterance)
            self._speech_events(events, seq, utterance)
        self._speech_events(events, seq, None)
        self._advance()
        return events

    def _speech_events(self, out: list[Result], seq: int, cut: Utterance | None) -> None:
        """Voice activity events for chunk `seq`: speech that starts (in an utterance
        `cut` here, or in the one in progress), an utterance that ends in silence (not
        one cut for length: the speaker goes on)."""
        base, seg = self._base_s or 0.0, self._segmenter
        start = cut.start if cut is not None else seg.speech_start
        if not self._speaking and (cut is not None or seg.in_speech):
            self._speaking = True
            out.append(Result(seq, "", False, start=round(base + start / RATE, 3),
                              event=SPEECH_STARTED))  # fmt: skip
        if cut is not None and not cut.forced:
            self._speaking = False
            out.append(Result(seq, "", False, end=round(base + cut.end / RATE, 3),
                              event=UTTERANCE_END))  # fmt: skip

    def flush(self) -> list[Result]:
        tail = self._decoder.flush()
        if len(tail):
            self._decoded += len(tail)
            if self._chunks:  # the resampler's tail is the last chunk's audio
                self._chunks[-1] = (self._chunks[-1][0], self._decoded)
        for utterance in self._segmenter.feed(tail):
            self._owe(utterance)
        last = self._segmenter.flush()
        if last is not None:
            self._owe(last)
        self._sealed = self._last_seq
        self._speaking = False  # a flush is a cut: speech after it starts anew
        self._advance()
        return []

    def final_since(self) -> float | None:
        if self._busy or not self._owed:
            return None
        owed = self._owed[0]
        if owed.seq >= self._last_seq and owed.seq > self._sealed:
            # It ends in the newest chunk, which may end another utterance too: the two
            # must share one final (one seq), so it waits for the next chunk or a flush.
            return None
        return owed.since

    def final_job(self) -> Job | None:
        if self.final_since() is None:
            return None
        owed = self._owed[0]
        self._busy = True
        audio, options = owed.utterance.audio, self._options

        def run() -> Decoded:
            return self._recognizer.transcribe(audio, True, options)

        return Job(True, owed.since, run, self._finished, audio, options)

    def partial_since(self, early: float = 0.0) -> float | None:
        seg = self._segmenter
        # The first once the utterance has lasted the interval, the next the interval
        # after the last; `early` seconds sooner where the engine would idle otherwise.
        interval = int((self._recognizer.partial_interval - early) * RATE)
        if not seg.in_speech or seg.position - seg.speech_start < interval:
            return None
        if self._partial_at > seg.speech_start and seg.position - self._partial_at < interval:
            return None
        return self._partial_time

    def partial_job(self, early: float = 0.0) -> Job | None:
        if self.partial_since(early) is None:
            return None
        seg = self._segmenter
        self._partial_at = seg.position
        since, self._partial_time = self._partial_time, time.monotonic()
        audio, seq, start = seg.current(), self._last_seq, seg.speech_start
        options = self._options

        def run() -> Decoded:
            return self._recognizer.transcribe(audio, False, options)

        def finish(out: Decoded) -> list[Result]:
            # Worthless once its utterance was cut meanwhile: the final follows.
            if not out.text or not seg.in_speech or seg.speech_start != start:
                return []
            return [Result(seq, out.text, False, language=out.language)]

        return Job(False, since, run, finish, audio, options)

    def _finished(self, out: Decoded) -> list[Result]:
        owed = self._owed.popleft()
        self._busy = False
        self._done += 1
        self._advance()
        if not out.text:
            return []
        base = self._base_s or 0.0
        start = base + owed.utterance.start / RATE
        timed = tuple((w, round(start + a, 3), round(start + b, 3), p) for w, a, b, p in out.words)
        return [Result(owed.seq, out.text, True, round(start, 3),
                       round(base + owed.utterance.end / RATE, 3), timed, out.language,
                       voice=out.voice)]  # fmt: skip

    def _owe(self, utterance: Utterance) -> None:
        self._partial_at = self._segmenter.position
        if len(utterance.audio) == 0:
            return  # all of it trimmed silence: nothing to say
        seq = self._seq_at(utterance.end)
        if self._owed and self._owed[-1].seq >= seq and not (self._busy and len(self._owed) == 1):
            # Two utterances end in one chunk (a client's chunks can be long): one final.
            prev = self._owed[-1]
            audio = np.concatenate([prev.utterance.audio, utterance.audio])
            joined = Utterance(audio, prev.utterance.start, utterance.end, utterance.forced)
            self._owed[-1] = _Owed(joined, prev.seq, prev.since)
            return
        if self._owed and self._owed[-1].seq >= seq:
            log.warning("two finals end in chunk %d; the gateway keeps the first", seq)
        self._owed.append(_Owed(utterance, seq, time.monotonic()))
        self._cut += 1

    def _seq_at(self, sample: int) -> int:
        """The chunk that holds `sample`."""
        for seq, end in self._chunks:
            if end >= sample:
                return seq
        return self._last_seq

    def _advance(self) -> None:
        """Commit the chunks whose audio no owed final nor the utterance in progress needs."""
        safe = self._segmenter.speech_start
        if self._owed:
            safe = min(safe, self._owed[0].utterance.start)
        while self._chunks and self._chunks[0][1] <= safe:
            self._committed = self._chunks.popleft()[0]
