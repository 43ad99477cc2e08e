"""What an utterance session owes and when: real speech through the real voice activity
detector, a recogniser that only records what it is asked to decode."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from services.transcriber.engines import DEFAULT_OPTIONS, Decoded, Options, drain, utterances
from services.transcriber.engines.segmenter import RATE
from services.transcriber.engines.utterances import (
    FIRST_PARTIAL_S,
    UtteranceSession,
    open_session,
    vad_model,
)
from tests.speech import Recorder, Speech, monologue, spoken


@pytest.fixture(scope="module")
def vad() -> object:
    return vad_model()


def session(vad: object, recorder: Recorder, rate: int = RATE) -> UtteranceSession:
    return open_session(recorder, vad, "pcm_s16le", rate)


def feed_all(sess: UtteranceSession, speech: Speech, ms: int = 100) -> int:
    """Every chunk of `speech`, no job run; the last seq."""
    seq = 0
    for seq, chunk in enumerate(speech.chunks(ms), start=1):
        sess.feed(seq, chunk, (seq - 1) * ms / 1000)
    return seq


def test_a_monologue_with_no_pause_becomes_finals_of_at_most_25_s_with_nothing_dropped(
    vad: object,
) -> None:
    speech = monologue(60)
    sess = session(vad, recorder := Recorder())
    last = feed_all(sess, speech)
    sess.flush()
    finals = drain(sess)
    assert len(finals) >= 3, [(r.start, r.end) for r in finals]
    for r in finals:
        assert r.start is not None and r.end is not None
        assert 0 < r.end - r.start <= 25.0
    # One run of speech: each final begins where the one before it was cut.
    for before, after in itertools.pairwise(finals):
        assert after.start == before.end and after.seq > before.seq
    assert finals[0].start <= 0.3 and finals[-1].end >= speech.seconds - 0.3
    assert finals[-1].seq == last and sess.committed_seq == last
    assert all(final for final, _ in recorder.calls)  # nobody asked for a partial


@pytest.mark.parametrize("early", [0.0, 0.3])
def test_a_partial_waits_until_the_utterance_has_lasted_the_first_partials_time(
    vad: object, early: float
) -> None:
    # A partial of the first few windows of an utterance is mostly silence and preroll:
    # whisper makes "Thank you." of such audio. None is due before FIRST_PARTIAL_S of
    # it, even where an idle engine asks `early`; the next ones an interval after the
    # one before, each `early` sooner.
    speech = spoken([1, 2, 3], pause_s=1.0)
    sess = session(vad, recorder := Recorder())
    for seq, chunk in enumerate(speech.chunks(), start=1):
        sess.feed(seq, chunk, (seq - 1) / 10)
        drain(sess)
        if (job := sess.partial_job(early)) is not None:
            job.finish(job.run())
    partials = [n for final, n in recorder.calls if not final]
    assert len(partials) >= 3
    first = FIRST_PARTIAL_S * RATE
    assert first <= min(partials) < first + 1600  # and no later than its chunk
    # Within an utterance (partials grow), an interval (1 s, less `early`) apart at least.
    steps = [b - a for a, b in itertools.pairwise(partials) if b > a]
    assert steps and min(steps) >= (1.0 - early) * RATE


class Quiet(Recorder):
    """A recogniser that hears nothing in a partial (too little of a word yet)."""

    def transcribe(
        self, audio: Any, final: bool, options: Options = DEFAULT_OPTIONS, hurry: bool = False
    ) -> Decoded:
        out = super().transcribe(audio, final, options, hurry)
        return out if final else Decoded("", [])


def test_a_partial_that_says_nothing_makes_the_next_due_sooner_and_by_the_utterances_start(
    vad: object,
) -> None:
    sess = session(vad, recorder := Quiet())
    chunks = monologue(6).chunks()
    seq = 0
    while (began := sess.partial_since()) is None:
        seq += 1
        sess.feed(seq, chunks[seq - 1], (seq - 1) / 10)
    apart = []  # chunks of new audio between partials that each said nothing
    for _ in range(2):
        job = sess.partial_job()
        assert job is not None
        assert job.finish(job.run()) == []  # nothing heard: nothing sent
        at = seq
        while (since := sess.partial_since()) is None:
            seq += 1
            sess.feed(seq, chunks[seq - 1], (seq - 1) / 10)
        apart.append(seq - at)
        # The person has seen nothing since the utterance began: the next partial is due
        # by then (the scheduler's deadline), not by when the empty one was asked.
        assert since == pytest.approx(began, abs=0.05)
    # A quarter of the 1 s interval after the utterance's first, half after the next
    # (in 100 ms chunks).
    assert 2 <= apart[0] <= 3 and 4 <= apart[1] <= 6, apart
    assert len(recorder.calls) == 2


def test_a_final_is_decoded_while_the_pause_that_ends_it_runs_out_and_is_ready_at_the_cut(
    vad: object,
) -> None:
    # Each utterance's audio is settled once the speaker has been silent a moment: its
    # final is decoded then, before the silence that ends it has run out; at the cut it
    # goes out without a second decode, the same as a final decoded after the cut.
    speech = spoken([1, 2, 3], pause_s=1.0, tail_s=1.0)
    sess = session(vad, recorder := Recorder())
    ahead_at: list[int] = []  # finals cut when each decode was handed out
    finals = []
    for seq, chunk in enumerate(speech.chunks(), start=1):
        sess.feed(seq, chunk, (seq - 1) / 10)
        while (job := sess.final_job()) is not None:
            if job.ready is None:
                ahead_at.append(sess.finals_cut)
            finals += job.finish(job.run())
    assert [r.final for r in finals] == [True] * 3
    assert ahead_at == [0, 1, 2]  # each decoded before its own cut
    assert [f for f, _ in recorder.calls] == [True] * 3  # and once
    after = session(vad, Recorder())  # the same audio, decoded only once cut
    feed_all(after, speech)
    after.flush()
    assert [(r.seq, r.start, r.end, r.text) for r in drain(after)] == [
        (r.seq, r.start, r.end, r.text) for r in finals
    ]


@pytest.mark.parametrize(("pace", "hurried"), [(1.0, True), (1.2, True), (10.0, False)])
def test_a_final_is_hurried_only_while_its_audio_comes_at_a_live_pace(
    vad: object, pace: float, hurried: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The scheduler asks for a final in a hurry when others wait behind it; a session
    # sent faster than real time is a backlog, no person waits on it: its finals keep
    # the engine's best (whisper: the beam). The chunks come `pace` times real time.
    clock = [1000.0]
    monkeypatch.setattr(utterances.time, "monotonic", lambda: clock[0])
    sess = session(vad, Recorder())
    finals: list[bool] = []
    for seq, chunk in enumerate(spoken([1, 2, 3], pause_s=1.0).chunks(), start=1):
        clock[0] += 0.1 / pace
        sess.feed(seq, chunk, (seq - 1) / 10)
        while (job := sess.final_job(hurry=True)) is not None:
            finals.append(job.hurried)
            job.finish(job.run())
    assert len(finals) >= 2 and set(finals) == {hurried}, finals


@pytest.mark.parametrize("decoded", ["in the pause", "after it"])
def test_a_speaker_who_goes_on_after_a_short_pause_gets_the_early_decode_as_a_partial(
    vad: object, decoded: str
) -> None:
    speech = spoken([1, 2], pause_s=0.4, trim=True, tail_s=1.0)
    sess = session(vad, recorder := Recorder())
    chunks = speech.chunks()
    seq = 0
    while (job := sess.final_job()) is None:
        seq += 1
        sess.feed(seq, chunks[seq - 1], (seq - 1) / 10)
    assert sess.finals_cut == 0  # settled in the pause, not cut
    out = job.run()
    paused = seq
    results = job.finish(out) if decoded == "in the pause" else []
    for n in range(paused + 1, paused + 8):  # the second sentence begins meanwhile
        results += [r for r in sess.feed(n, chunks[n - 1], (n - 1) / 10) if not r.event]
    if decoded == "after it":
        results = job.finish(out)
    assert sess.finals_cut == 0
    assert [(r.final, r.text) for r in results] == [(False, out.text)]
    for n in range(paused + 8, len(chunks) + 1):
        sess.feed(n, chunks[n - 1], (n - 1) / 10)
    sess.flush()
    finals = drain(sess)
    assert len(finals) == 1 and finals[0].end is not None and finals[0].end > 4.0
    assert recorder.calls[-1][1] > recorder.calls[0][1]  # both sentences, decoded again


def test_in_a_burst_only_the_newest_state_of_an_utterance_is_decoded_as_a_partial(
    vad: object,
) -> None:
    speech = monologue(6)
    sess = session(vad, recorder := Recorder())
    feed_all(sess, speech)
    first = sess.partial_job()
    assert first is not None and sess.partial_job() is None  # one, of all of it so far
    results = first.finish(first.run())
    assert [n for _, n in recorder.calls] == [len(sess._segmenter.current())]
    assert results and not results[0].final
    assert sess.partial_since() is None  # nothing new to say until more speech comes


def test_a_partial_overtaken_by_a_flush_is_dropped(vad: object) -> None:
    sess = session(vad, Recorder())
    feed_all(sess, monologue(3))
    job = sess.partial_job()
    assert job is not None
    out = job.run()
    sess.flush()  # a finalize came while it was decoded
    assert job.finish(out) == []
    assert [r.final for r in drain(sess)] == [True]


def test_two_utterances_that_end_in_one_chunk_share_one_final(vad: object) -> None:
    # A client may send seconds in one frame: two sentences, each followed by a pause the
    # detector cuts at. The gateway keeps one final per seq, so they are one final.
    speech = spoken([1, 2], pause_s=1.0, tail_s=1.0)
    sess = session(vad, Recorder())
    sess.feed(1, speech.pcm.astype("<i2").tobytes(), 0.0)
    assert sess.final_since() is None  # the next chunk or a flush may end another in it
    sess.feed(2, np.zeros(1600, dtype="<i2").tobytes(), speech.seconds)
    finals = drain(sess)
    assert len(finals) == 1 and finals[0].seq == 1
    assert finals[0].end is not None and finals[0].end > speech.seconds - 2.0


def test_a_replay_of_the_uncommitted_chunks_owes_the_same_finals(vad: object) -> None:
    # A transcriber killed with finals owed: its replacement is fed the chunks after
    # committed_seq (still pending in its mailbox) and owes the same finals.
    speech = spoken([1, 2, 3], pause_s=1.0, tail_s=0.3)
    chunks = speech.chunks()
    first = session(vad, Recorder())
    cut = len(chunks) * 2 // 3
    for seq, chunk in enumerate(chunks[:cut], start=1):
        first.feed(seq, chunk, (seq - 1) / 10)
    owed = first.finals_cut - first.finals_done
    assert owed >= 1 and first.committed_seq < cut  # nothing decoded: nothing committed
    replay = session(vad, Recorder())
    owed_by: list[list[tuple[int, float | None, float | None]]] = []
    for sess, start in ((first, cut + 1), (replay, first.committed_seq + 1)):
        for seq in range(start, len(chunks) + 1):
            sess.feed(seq, chunks[seq - 1], (seq - 1) / 10)
        sess.flush()
        owed_by.append([(r.seq, r.start, r.end) for r in drain(sess)])
    assert owed_by[0] == owed_by[1] and len(owed_by[0]) == 3


@pytest.mark.parametrize("rate", [8000, 11025, 22050, 44100, 48000])
def test_other_rates_cut_the_same_utterances_and_take_audio_after_a_flush(
    vad: object, rate: int
) -> None:
    speech = spoken([1, 2], pause_s=1.0).at(rate)
    sess = session(vad, Recorder(), rate)
    chunks = speech.chunks()
    half = len(chunks) // 2
    for seq, chunk in enumerate(chunks, start=1):
        sess.feed(seq, chunk, (seq - 1) / 10)
        if seq == half:
            sess.flush()  # a finalize in the middle
    sess.flush()
    sess.flush()  # the close, then the end that follows it
    finals = drain(sess)
    assert 2 <= len(finals) <= 3 and sess.committed_seq == len(chunks)


def test_float_audio_cuts_the_same_utterances_as_16_bit(vad: object) -> None:
    speech = spoken([1, 2], pause_s=1.0, tail_s=0.3)
    ends: list[list[float | None]] = []
    for encoding in ("pcm_s16le", "pcm_f32le"):
        sess = open_session(Recorder(), vad, encoding, RATE)
        data = speech.pcm.astype("<i2").tobytes()
        if encoding == "pcm_f32le":
            data = (speech.pcm.astype("<f4") / 32768).tobytes()
        step = len(data) // len(speech.chunks())
        for seq, start in enumerate(range(0, len(data), step), start=1):
            sess.feed(seq, data[start : start + step], 0.0)
        sess.flush()
        ends.append([r.end for r in drain(sess)])
    assert ends[0] == ends[1] and len(ends[0]) == 2


def test_speech_events_bracket_each_utterance_and_a_cut_for_length_is_no_end(
    vad: object,
) -> None:
    sess = session(vad, Recorder())
    speech = spoken([1, 2], pause_s=1.2, tail_s=1.0)
    events = []
    for seq, chunk in enumerate(speech.chunks(), start=1):
        events += [(r.event, r.start, r.end) for r in sess.feed(seq, chunk, (seq - 1) / 10)]
    kinds = [kind for kind, _, _ in events]
    assert kinds == ["speech_started", "utterance_end"] * 2, events
    assert events[0][1] < events[1][2] < events[2][1] < events[3][2] <= speech.seconds
    finals = [(r.start, r.end) for r in (sess.flush() or drain(sess))]
    assert len(finals) == 2
    # A minute with no pause is cut for length: one start, no end until its flush.
    sess = session(vad, Recorder())
    speech = monologue(60)
    kinds = []
    for seq, chunk in enumerate(speech.chunks(), start=1):
        kinds += [r.event for r in sess.feed(seq, chunk, (seq - 1) / 10)]
    assert kinds == ["speech_started"], kinds
