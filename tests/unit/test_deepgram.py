"""Deepgram's query parameters as a hark session's settings (services/gateway/deepgram.py)."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from services.gateway.deepgram import listen_format
from services.gateway.protocol import ClientError


def test_deepgrams_settings_become_harks() -> None:
    fmt, listen = listen_format(MultiDict([
        ("model", "nova-3"), ("encoding", "mulaw"), ("sample_rate", "8000"),
        ("language", "en-US"), ("interim_results", "True"), ("endpointing", "300"),
        ("keywords", "Siobhan:2"), ("keyterm", "Krzysztof"), ("vad_events", "true"),
        ("utterance_end_ms", "1000"), ("punctuate", "true"), ("diarize", "true"),
    ]))  # fmt: skip
    assert (fmt.encoding, fmt.sample_rate, fmt.language) == ("mulaw", 8000, "en")
    assert fmt.interim and fmt.events and fmt.end_silence == 0.3
    assert fmt.hotwords == "Siobhan, Krzysztof"
    assert listen.model == "nova-3" and listen.vad_events and listen.utterance_end


def test_deepgrams_defaults_and_edges() -> None:
    fmt, listen = listen_format(MultiDict())
    assert fmt.encoding == "auto" and not fmt.interim and fmt.end_silence is None
    assert not listen.vad_events and not listen.utterance_end
    assert listen_format(MultiDict(endpointing="10"))[0].end_silence == 0.1  # hark's shortest
    assert listen_format(MultiDict(endpointing="false"))[0].end_silence == 5.0
    assert listen_format(MultiDict(language="multi"))[0].language == "auto"
    assert listen_format(MultiDict(encoding="opus"))[0].encoding == "ogg"


@pytest.mark.parametrize("query", [
    {"encoding": "speex"}, {"channels": "2"}, {"multichannel": "true"},
    {"endpointing": "soon"}, {"encoding": "linear16", "sample_rate": "96000"},
    {"language": "english"},
])  # fmt: skip
def test_what_hark_cannot_take_is_refused(query: dict[str, str]) -> None:
    with pytest.raises(ClientError) as refused:
        listen_format(MultiDict(query))
    assert refused.value.code == "bad_setting"
