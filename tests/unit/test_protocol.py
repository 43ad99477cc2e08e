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


@pytest.mark.parametrize(
    "params",
    [{"encoding": "mp3"}, {"sample_rate": "fast"}, {"sample_rate": 100}, {"sample_rate": True},
     {"interim": "maybe"}],
)  # fmt: skip
def test_unusable_audio_setting_is_refused(params: dict[str, object]) -> None:
    with pytest.raises(ClientError) as err:
        AudioFormat().updated(params)
    assert err.value.code == "bad_setting"
