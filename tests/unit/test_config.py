"""Settings: environment names, the original service's aliases, validation, redaction."""

from __future__ import annotations

import pytest

from shared.config import Settings, SettingsError, redact_url


def test_defaults_match_the_documented_ones() -> None:
    s = Settings.from_env({})
    assert (s.host, s.port, s.status_port, s.transcribers, s.engine) == (
        "127.0.0.1", 8000, 8001, 2, "whisper",
    )  # fmt: skip
    assert s.redis_url is None
    assert s.max_chunk_bytes == 1024 * 1024


def test_hark_variables_are_read() -> None:
    env = {"HARK_PORT": "9000", "HARK_TRANSCRIBERS": "4", "HARK_HEARTBEAT_INTERVAL": "0.5",
           "HARK_LOG_LEVEL": "debug"}  # fmt: skip
    s = Settings.from_env(env)
    assert (s.port, s.transcribers, s.heartbeat_interval, s.log_level) == (9000, 4, 0.5, "DEBUG")


def test_original_service_variables_still_work() -> None:
    s = Settings.from_env({"APP_PORT": "8080", "REDIS_URL": "redis://r:6379/0",
                           "MAX_AUDIO_SIZE": "2048", "LOG_LEVEL": "WARNING"})  # fmt: skip
    assert (s.port, s.redis_url, s.max_chunk_bytes, s.log_level) == (
        8080, "redis://r:6379/0", 2048, "WARNING",
    )  # fmt: skip


def test_hark_variable_wins_over_the_alias() -> None:
    assert Settings.from_env({"HARK_PORT": "1", "APP_PORT": "2"}).port == 1


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"HARK_PORT": "eighty"}, "HARK_PORT"),
        ({"HARK_PORT": "70000"}, "HARK_PORT"),
        ({"HARK_TRANSCRIBERS": "0"}, "HARK_TRANSCRIBERS"),
        ({"HARK_ENGINE": "nope"}, "HARK_ENGINE"),
        ({"HARK_REDIS_URL": "http://x"}, "HARK_REDIS_URL"),
        ({"HARK_BACKOFF_MIN": "5", "HARK_BACKOFF_MAX": "1"}, "HARK_BACKOFF_MIN"),
        ({"HARK_BATCH_WAIT": "-0.001"}, "HARK_BATCH_WAIT"),
        ({"HARK_BATCH_WAIT": "2"}, "HARK_BATCH_WAIT"),
        ({"HARK_ACK_WAIT": "-0.001"}, "HARK_ACK_WAIT"),
        ({"HARK_ACK_WAIT": "0.5"}, "HARK_ACK_WAIT"),
    ],
)
def test_bad_setting_is_refused_naming_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_repr_and_public_view_never_show_the_redis_password() -> None:
    s = Settings.from_env({"HARK_REDIS_URL": "redis://user:s3cret@host:6380/1"})
    assert "s3cret" not in repr(s)
    assert "s3cret" not in str(s.public())
    assert s.public()["redis_url"] == "redis://user:***@host:6380/1"


def test_redact_leaves_a_url_without_password_alone() -> None:
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    assert redact_url("unix:///run/redis.sock?db=2") == "unix:///run/redis.sock?db=2"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:SECRET@host:6380/1", "redis://user:***@host:6380/1"),
        ("rediss://:SECRET@[::1]:6380/0", "rediss://:***@[::1]:6380/0"),
        ("redis://SECRET@host/0", "redis://***@host/0"),
        ("unix:///p/redis.sock?db=0&password=SECRET", "unix:///p/redis.sock?db=0&password=***"),
        ("redis://host/0?Password=SECRET&username=u", "redis://host/0?Password=***&username=u"),
        ("unix://:SECRET@/p/redis.sock?db=0", "unix://:***@/p/redis.sock?db=0"),
    ],
)
def test_every_credential_form_redis_py_takes_is_redacted(url: str, shown: str) -> None:
    # Each form works with redis-py (the query's password too): each must be hidden
    # from /config, the banner and the logs.
    assert redact_url(url) == shown
    s = Settings.from_env({"HARK_REDIS_URL": url})
    assert "SECRET" not in repr(s) and "SECRET" not in str(s.public())


def test_to_env_rebuilds_the_same_settings_in_a_child() -> None:
    s = Settings.from_env({"HARK_PORT": "9001", "HARK_REDIS_URL": "redis://:pw@h:1/0",
                           "HARK_HEARTBEAT_MISSES": "5"})  # fmt: skip
    assert Settings.from_env(s.to_env()) == s


def test_a_bad_number_says_what_it_should_be() -> None:
    with pytest.raises(SettingsError, match=r"HARK_TRANSCRIBERS='abc': not an integer$"):
        Settings.from_env({"HARK_TRANSCRIBERS": "abc"})
    with pytest.raises(SettingsError, match=r"HARK_MAX_LAG='soon': not a number$"):
        Settings.from_env({"HARK_MAX_LAG": "soon"})


def test_a_bad_flag_is_named_as_typed(capsys: pytest.CaptureFixture[str]) -> None:
    # `--transcribers 0` was reported as HARK_TRANSCRIBERS, which the user never set.
    from services.supervisor import cli

    with pytest.raises(SystemExit) as stopped:
        cli.main(["up", "--transcribers", "0"])
    assert str(stopped.value.code).startswith("hark: bad setting: --transcribers=0")
