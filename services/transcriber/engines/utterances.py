"""Utterance engines: voice activity cuts the stream, a recogniser transcribes each cut.

Shared by every engine that recognises whole utterances (whisper, sphinx). Taking
audio in is cheap (resampling, voice activity); recognition is owed as jobs that the
actor's scheduler runs: one final per utterance (cut by `silence_s` of silence, the
maximum length, `finalize` or `close`), with start and end times and word timings,
and while a person speaks a partial of the utterance as it stands, at most one per
`partial_interval` seconds of new speech. Once the speaker has paused long enough for
the utterance's audio to be settled (`Segmenter.settled`) its final is decoded ahead,
while the silence that ends it runs out: at the cut it is ready (one speaker's finals
came 0.32 s after the speech at the median, 0.53 s before: bench/RESULTS.md); if the
speaker goes on instead, its text goes out as a partial. A chunk counts as committed only once every
utterance it belongs to has its final, so a restarted actor replays just the audio
of the finals still owed and of the utterance in progress, and rebuilds them.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, replace
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

# An utterance's first partial once it has lasted this long (its 0.29 s of audio before
# the speech included), never sooner. A partial at least every 1.5 s from the start of
# the speech (issue 22) leaves the scheduler room only if the first is due well before
# that: at 1 s, 13 of the 17 waits over 1.5 s at 8 speakers (128 sentences) were for the
# first. Less is mostly guessed: at 0.7 s, or 0.4 s where an idle engine took it early,
# 10 % of all partials at 8 speakers shared no word with their final ("Good.",
# "Okay", "Ziv-3"), at 0.8 s 2-3 %.
FIRST_PARTIAL_S = 0.8
# A partial that says nothing (too little of a word yet) makes the next due this share
# of an interval of new audio later: a quarter after an utterance's first, half after
# others (a noise whisper hears nothing in is not decoded four times a second). At half
# after the first too, a sentence whose first 0.9 s whisper says nothing of ("Please
# write...") showed its first text 1.1-1.85 s after it began at 4 speakers on a slower
# CPU, past the 1.5 s the cadence allows; at a quarter 1.05-1.26 s (bench/RESULTS.md).
EMPTY_RETRY = (0.25, 0.5)
# A final is hurried (see EngineSession.final_job) only while its session's audio comes
# at a live speaker's pace: over the last PACE_WINDOW_S, no more than LIVE_LEAD_S of
# audio ahead of the clock. Audio sent faster than real time is a backlog, not a person
# waiting for the words: two sessions sent at 10 times real time, each final hurried
# while the other's waited, missed 6.0 % of one's words (the 48 kHz test speech).
PACE_WINDOW_S = 3.0
LIVE_LEAD_S = 1.0


class Recognizer(Protocol):
    """Speech to text for one utterance's audio (16 kHz float32)."""

    partial_interval: float

    def transcribe(
        self, audio: Audio, final: bool, options: Options = DEFAULT_OPTIONS, hurry: bool = False
    ) -> Decoded:
        """Its text, and for a final its words (times relative to the audio); `hurry`: a
        final others wait behind (see EngineSession.final_job)."""
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
    ready: Decoded | None = None  # decoded ahead of its cut


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
        # (when, samples decoded by then) of the chunks of the last PACE_WINDOW_S
        self._arrivals: deque[tuple[float, int]] = deque()
        self._decoded = 0
        self._committed = 0
        self._last_seq = 0
        self._sealed = 0  # the last chunk a flush ended: no utterance ends in it any more
        self._base_s: float | None = None  # stream time of this engine session's first sample
        self._partial_at = 0  # segmenter position of the last partial (or final)
        self._partial_time = time.monotonic()  # when the last partial was handed out
        self._owed: deque[_Owed] = deque()
        self._busy = False  # the oldest owed final (or one ahead) is being decoded
        # The settled utterance in progress and since when (see Segmenter.settled); the
        # last one handed out to be decoded ahead; what that gave, until its cut.
        self._settled: tuple[tuple[int, int], float] | None = None
        self._ahead_key: tuple[int, int] | None = None
        self._ahead: tuple[tuple[int, int], Decoded] | None = None
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
        now = time.monotonic()
        self._arrivals.append((now, self._decoded))
        while now - self._arrivals[0][0] > PACE_WINDOW_S:
            self._arrivals.popleft()
        events: list[Result] = []
        for utterance in self._segmenter.feed(samples):
            self._owe(utterance)
            self._speech_events(events, seq, utterance)
        self._speech_events(events, seq, None)
        self._settle(events, seq)
        self._advance()
        return events

    def _settle(self, out: list[Result], seq: int) -> None:
        """Note whether the utterance in progress is settled (see `Segmenter.settled`);
        if the speaker goes on after a final was decoded ahead, its text is a partial."""
        key = self._segmenter.settled()
        if self._ahead is not None and key != self._ahead[0]:
            (start, _), decoded = self._ahead
            self._ahead = None
            out += self._went_on(start, self._partial_at, seq, decoded)
        if key is None:
            self._settled = None
        elif self._settled is None or self._settled[0] != key:
            self._settled = (key, time.monotonic())

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

    @property
    def live(self) -> bool:
        """Whether the audio comes at a live speaker's pace (see LIVE_LEAD_S)."""
        if not self._arrivals:
            return True
        (then, before), (last, decoded) = self._arrivals[0], self._arrivals[-1]
        return (decoded - before) / RATE - (last - then) <= LIVE_LEAD_S

    def final_since(self) -> float | None:
        if self._busy:
            return None
        if not self._owed:  # the utterance in progress, if its final may go ahead
            if self._settled is None or self._settled[0] == self._ahead_key:
                return None
            return self._settled[1]
        owed = self._owed[0]
        if owed.seq >= self._last_seq and owed.seq > self._sealed:
            # It ends in the newest chunk, which may end another utterance too: the two
            # must share one final (one seq), so it waits for the next chunk or a flush.
            return None
        return owed.since

    def final_job(self, hurry: bool = False) -> Job | None:
        if self.final_since() is None:
            return None
        hurry = hurry and self.live
        if not self._owed:
            return self._ahead_job(hurry)
        owed = self._owed[0]
        self._busy = True
        audio, options, ready = owed.utterance.audio, self._options, owed.ready

        def run() -> Decoded:
            if ready is not None:
                return ready
            return self._recognizer.transcribe(audio, True, options, hurry)

        return Job(True, owed.since, run, self._finished, audio, options, ready, hurry)

    def _ahead_job(self, hurry: bool) -> Job:
        """The final of the utterance in progress, decoded before its cut (see the
        module doc)."""
        assert self._settled is not None
        (key, since), seg = self._settled, self._segmenter
        self._ahead_key, self._busy = key, True
        # It stands for a partial too, should the speaker go on.
        self._partial_at, self._partial_time = seg.position, time.monotonic()
        audio, seq, at = seg.settled_audio(), self._last_seq, seg.position
        # Its voice is found once it is a final (diarize), not for a guess.
        options = replace(self._options, diarize=False)

        def run() -> Decoded:
            return self._recognizer.transcribe(audio, True, options, hurry)

        def finish(out: Decoded) -> list[Result]:
            self._busy = False
            for owed in self._owed:  # cut while it was decoded
                if _key(owed.utterance) == key:
                    owed.ready = out
                    return []
            if self._settled is not None and self._settled[0] == key:
                self._ahead = (key, out)  # still silent: the cut will take it
                return []
            return self._went_on(key[0], at, seq, out)

        return Job(True, since, run, finish, audio, options, hurried=hurry)

    def _went_on(self, start: int, at: int, seq: int, out: Decoded) -> list[Result]:
        """A final decoded ahead (handed out at segmenter position `at`) whose speaker
        went on: what was said so far is a partial, unless the utterance was cut
        elsewhere meanwhile (a flush, a forced cut: decoded again) or a second of newer
        audio has overtaken it (a burst)."""
        seg = self._segmenter
        if not (out.text and seg.in_speech and seg.speech_start == start):
            return []
        if seg.position - at >= self._recognizer.partial_interval * RATE:
            return []
        return [Result(seq, out.text, False, language=out.language)]

    def partial_since(self, early: float = 0.0) -> float | None:
        seg = self._segmenter
        # The first once the utterance has lasted FIRST_PARTIAL_S, the next the interval
        # after the last, `early` seconds sooner where the engine would idle otherwise.
        every = self._recognizer.partial_interval
        interval = int((every - early) * RATE)
        first = int(min(FIRST_PARTIAL_S, every) * RATE)
        if not seg.in_speech or seg.position - seg.speech_start < first:
            return None
        if self._settled is not None:
            return None  # a pause: nothing new to say (its final may be decoded ahead)
        if self._first_partial():  # due since the utterance began
            return time.monotonic() - (seg.position - seg.speech_start) / RATE
        if seg.position - self._partial_at < interval:
            return None
        return self._partial_time

    def _first_partial(self) -> bool:
        """Whether the next partial is its utterance's first (none nor a final decoded
        ahead has been handed out since the utterance began)."""
        return self._partial_at <= self._segmenter.speech_start

    def partial_job(self, early: float = 0.0) -> Job | None:
        if (since := self.partial_since(early)) is None:
            return None
        seg, first = self._segmenter, self._first_partial()
        self._partial_at, self._partial_time = seg.position, time.monotonic()
        audio, seq, start = seg.current(), self._last_seq, seg.speech_start
        options = self._options

        def run() -> Decoded:
            return self._recognizer.transcribe(audio, False, options)

        at = seg.position

        def finish(out: Decoded) -> list[Result]:
            # Worthless once its utterance was cut meanwhile: the final follows.
            if not seg.in_speech or seg.speech_start != start:
                return []
            # Too little heard yet (a word begun): the next comes sooner (see
            # EMPTY_RETRY), due by when the person last saw a text (or the utterance began).
            if not out.text:
                if self._partial_at == at:
                    retry = EMPTY_RETRY[0] if first else EMPTY_RETRY[1]
                    back = int(self._recognizer.partial_interval * (1 - retry) * RATE)
                    self._partial_at = max(at - back, start + 1)
                    self._partial_time = since
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
        ahead, self._ahead, self._settled = self._ahead, None, None
        if len(utterance.audio) == 0:
            return  # all of it trimmed silence: nothing to say
        ready = ahead[1] if ahead is not None and ahead[0] == _key(utterance) else None
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
        self._owed.append(_Owed(utterance, seq, time.monotonic(), ready))
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


def _key(utterance: Utterance) -> tuple[int, int]:
    """Where an utterance lies (start, length): two cuts that agree hold the same audio."""
    return utterance.start, len(utterance.audio)
