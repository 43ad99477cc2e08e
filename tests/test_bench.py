"""Tiny runs of the benchmarks, so the harness keeps working (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def _bench(*args: str) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    """Run `python -m <args>` from the repository; the process and its JSON lines."""
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=110)  # fmt: skip
    return done, [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]


@pytest.mark.parametrize("mode", ["realtime", "max"])
def test_the_load_generator_runs_against_echo_and_hark_and_counts_every_chunk(mode: str) -> None:
    done, lines = _bench("bench.load", "--clients", "4", "--seconds", "1", "--mode",
                         mode, "--window", "2", "--transcribers", "1", "--drain", "20")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    echo, hark = lines
    assert (echo["target"], hark["target"]) == ("echo", "hark")
    for line in lines:
        assert line["connected"] == 4 and line["sent"] > 0
        assert line["transcribed"] == line["sent"]
        assert line["lost"] == line["duplicated"] == line["misrouted"] == 0
    assert hark["acked"] == hark["sent"] and hark["refused"] == 0 and hark["errors"] == {}
    assert set(hark["processes"]) == {"redis", "gateway", "transcriber-0"}
    ratio = hark["transcribed_per_s"] / echo["transcribed_per_s"]
    assert abs(hark["ratio_to_echo"] - ratio) <= 0.0005  # rounded to 3 places
    assert "timeline" not in hark


def test_the_timeline_holds_every_final_once_slice_by_slice() -> None:
    done, lines = _bench("bench.load", "--clients", "4", "--seconds", "1.5", "--transcribers",
                         "1", "--drain", "20", "--no-echo", "--timeline", "0.5")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    (hark,) = lines
    slices = hark["timeline"]
    starts = [start for start, _, _, _ in slices]
    assert starts == sorted(set(starts)) and all(start % 0.5 == 0 for start in starts)
    assert len(slices) >= 3  # 1.5 s of sending, in slices of 0.5 s
    assert sum(n for _, n, _, _ in slices) == hark["transcribed"] == hark["sent"]
    assert all(0 < p50 <= p99 for _, _, p50, p99 in slices)


def test_the_restart_benchmark_kills_and_times_a_transcriber() -> None:
    done, lines = _bench("bench.restart", "--kills", "2", "--interval", "0.5")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    (line,) = lines
    assert line["kills"] == 2 and line["kill_to_running_ms"]["max"] > 0


def test_the_capacity_benchmark_runs_two_live_speakers_twice_and_measures_them() -> None:
    done, lines = _bench("bench.capacity", "--sweep", "2", "--runs", "2", "--sentences", "1")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    *runs, summary = lines
    assert [line["run"] for line in runs] == [1, 2]
    for line in runs:
        assert (line["speakers"], line["refused"], line["finals"]) == (2, 0, 2)
        assert 0 <= line["wer"] <= 0.2 and line["final_latency_s"]["p50"] > 0
        assert set(line["cpu_s_per_s"]) == {"redis", "gateway", "transcriber-0", "transcriber-1"}
        # Hark's cut begins before the speech (its 0.3 s of audio before it), so the wait
        # counted from the speech itself is no longer than the one counted from the cut.
        assert 0 < line["partial_wait_s"]["max"] <= line["partial_wait_from_cut_s"]["max"]
        assert line["probe_s"]["before"] > 0 and line["probe_s"]["after"] > 0
    held = sum(line["targets_hold"] for line in runs)
    assert summary == {"largest_k_within_targets": 2 if held == 2 else None,
                       "runs_that_held": {"2": f"{held}/2"}}  # fmt: skip


def test_the_partial_cadence_is_measured_while_the_person_speaks() -> None:
    from bench.capacity import measure
    from tests.speech import QUIET, spoken

    speech = spoken([1, 2], pause_s=1.0)
    (first, second) = speech.spans
    loud = np.flatnonzero(np.abs(speech.pcm.astype(np.int32)) > QUIET) / speech.rate
    assert (first[0], second[1]) == pytest.approx((loud[0], loud[-1] + 1 / speech.rate))
    assert first[1] + 1.0 < second[0]  # the pause lies between them, quiet
    assert not np.any((loud > first[1]) & (loud < second[0]))
    # A partial 1 s into each sentence's speech; finals cut 0.3 s before the speech and
    # 0.2 s after it, as hark cuts them.
    events: list[tuple[float, dict[str, Any]]] = []
    for onset, offset in speech.spans:
        events.append((onset + 1.0, {"status": "transcript", "final": False, "text": "x"}))
        final = {"status": "transcript", "final": True, "text": "",
                 "start": onset - 0.3, "end": offset + 0.2}  # fmt: skip
        events.append((offset + 0.9, final))
    out = measure([speech], [{"events": events}])
    said = max(max(1.0, b - a - 1.0) for a, b in speech.spans)  # onset, partial, offset
    cut = max(max(1.3, b + 0.2 - (a + 1.0)) for a, b in speech.spans)  # start, partial, end
    assert out["partial_wait_s"]["max"] == pytest.approx(said, abs=1e-3)
    assert out["partial_wait_from_cut_s"]["max"] == pytest.approx(cut, abs=1e-3)


def test_the_decoding_benchmark_decodes_every_encoding_whole() -> None:
    done, lines = _bench("bench.decode", "--seconds", "10")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert [line["encoding"] for line in lines] == ["webm", "ogg", "mp3", "flac", "wav",
                                                    "mulaw", "alaw"]  # fmt: skip
    for line in lines:
        assert abs(line["decoded_s"] - line["audio_s"]) < 0.1, line  # nothing held back lost


def test_the_diarization_benchmark_scores_the_dialogue_with_and_without_labels() -> None:
    done, lines = _bench("bench.diarize", "--rounds", "1")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    plain, voiced, total = lines
    assert (plain["diarize"], voiced["diarize"]) == (False, True)
    assert plain["complete"] and voiced["complete"] and voiced["wer"] == plain["wer"]
    assert voiced["labels"] == ["S1", "S2", "S3"] and voiced["word_accuracy_after_pause"] >= 0.95
    assert 0 <= voiced["der"] < 1 and total["cpu_ratio_diarize_over_plain"] > 0


def test_a_run_is_probed_just_before_and_just_after() -> None:
    from bench.capacity import probed

    calls: list[str] = []

    def probe() -> float:
        calls.append("probe")
        return float(len(calls))

    def run() -> dict[str, Any]:
        calls.append("run")
        return {"speakers": 2}

    line = probed(probe, run)
    assert calls == ["probe", "run", "probe"]
    assert line == {"speakers": 2, "probe_s": {"before": 1.0, "after": 3.0}}


def test_a_sweep_counts_a_speaker_count_only_if_it_and_every_smaller_one_held() -> None:
    from bench.capacity import largest_held

    assert largest_held({2: 3, 4: 3, 6: 2, 8: 3}, runs=3) == 4  # 8 held after 6 failed
    assert largest_held({8: 1, 4: 1}, runs=1) == 8  # the order given does not matter
    assert largest_held({4: 0, 6: 1}, runs=1) is None
