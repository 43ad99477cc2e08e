"""The client protocol's parsing: control frames and audio settings."""

from __future__ import annotations

import pytest

from services.gateway.protocol import AudioFormat, ClientError, parse_control


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", "bad_json"),
        ("[1, 2]", "bad_message"),
        ('{"type": 5}', "bad_message"),
        ('{"kind": "close"}', "bad_message"),
        ('{"type": "explode"}', "unknown_message"),
    ],
)
def test_bad_control_frame_gets_a_stable_code(text: str, code: str) -> None:
    with pytest.raises(ClientError) as err:
        parse_control(text)
    assert err.value.code == code
    assert err.value.reply()["status"] == "error"


@pytest.mark.parametrize("kind", ["start", "finalize", "close", "keepalive"])
def test_known_control_frames_parse(kind: str) -> None:
    assert parse_control(f'{{"type": "{kind}"}}')["type"] == kind


def test_query_strings_set_the_audio_format() -> None:
    fmt = AudioFormat().updated(
        {"encoding": "pcm_f32le", "sample_rate": "8000", "interim": "false"}
    )
    assert fmt == AudioFormat("pcm_f32le", 8000, False)
    assert "end_silence" not in fmt.public()  # the transcribers' default, HARK_END_SILENCE


@pytest.mark.parametrize(("value", "seconds"), [("0.3", 0.3), (1, 1.0), (2.5, 2.5)])
def test_a_session_sets_the_silence_that_ends_its_utterances(value: object, seconds: float) -> None:
    fmt = AudioFormat().updated({"end_silence": value})
    assert fmt.end_silence == seconds and fmt.public()["end_silence"] == seconds


@pytest.mark.parametrize(
    "params",
    [{"encoding": "aac"}, {"sample_rate": "fast"}, {"sample_rate": 100}, {"sample_rate": True},
     {"interim": "maybe"}, {"end_silence": "0.05"}, {"end_silence": 6}, {"end_silence": "nan"},
     {"end_silence": True}, {"end_silence": "soon"}],
)  # fmt: skip
def test_unusable_audio_setting_is_refused(params: dict[str, object]) -> None:
    with pytest.raises(ClientError) as err:
        AudioFormat().updated(params)
    assert err.value.code == "bad_setting"


def test_a_session_chooses_its_language_prompt_hotwords_and_events() -> None:
    fmt = AudioFormat().updated(
        {"language": "auto", "prompt": "Notes: Siobhan met Krzysztof.", "hotwords": "Siobhan",
         "events": "true"}
    )  # fmt: skip
    assert (fmt.language, fmt.prompt, fmt.hotwords, fmt.events) == (
        "auto", "Notes: Siobhan met Krzysztof.", "Siobhan", True)  # fmt: skip
    # The record keeps them as strings; read back (a resume), they are the same.
    record = {k: str(int(v) if isinstance(v, bool) else v) for k, v in fmt.public().items()}
    assert AudioFormat().updated(record) == fmt
    assert set(AudioFormat().public()) == {"encoding", "sample_rate", "interim"}


@pytest.mark.parametrize(
    "params",
    [{"language": "english"}, {"language": "EN"}, {"language": ""}, {"language": 7},
     {"prompt": "x" * 1001}, {"prompt": "a\x00b"}, {"hotwords": ["a"]}, {"hotwords": "y" * 501},
     {"events": "sometimes"}],
)  # fmt: skip
def test_unusable_session_option_is_refused(params: dict[str, object]) -> None:
    with pytest.raises(ClientError) as err:
        AudioFormat().updated(params)
    assert err.value.code == "bad_setting" and next(iter(params)) in err.value.message


def test_telephone_audio_is_8_khz_unless_the_client_says_otherwise() -> None:
    assert AudioFormat().updated({"encoding": "mulaw"}).sample_rate == 8000
    assert AudioFormat().updated({"encoding": "alaw", "sample_rate": "16000"}).sample_rate == 16000
    assert AudioFormat().updated({"encoding": "webm"}).sample_rate == 16000  # the stream's own
