"""The client protocol of `/ws`: reply shapes, error codes, control and start frames.

Reply shapes are the original service's (`received`, `transcript`, `error`, each with
a `status` field); hark only adds fields. Every error carries a stable `code` that
a client can act on; the same code appears in the gateway's log.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from shared.config import DIARIZE_EXTRA, SAMPLE_WIDTHS, diarize_available

# What a client may send: PCM goes to the transcribers as it comes; the rest the
# gateway decodes to PCM (services/gateway/decode.py).
# encoding -> FFmpeg's demuxer (None: detected from the first bytes)
CONTAINERS: dict[str, str | None] = {
    "webm": "webm", "ogg": "ogg", "mp3": "mp3", "flac": "flac", "wav": "wav", "auto": None,
}  # fmt: skip
TELEPHONE = {"mulaw": "pcm_mulaw", "alaw": "pcm_alaw"}  # encoding -> FFmpeg's codec
ENCODINGS = (*SAMPLE_WIDTHS, *TELEPHONE, *CONTAINERS)
TELEPHONE_RATE = 8000  # G.711's own, unless the client says otherwise

SAMPLE_RATES = range(8000, 48001)
END_SILENCE_S = (0.1, 5.0)  # the silence that may end an utterance, seconds
# A language code as whisper names languages (en, de, haw, yue), or auto; which ones an
# engine knows, its transcribers' heartbeats say (Gateway.check_language).
LANGUAGE = re.compile(r"[a-z]{2,3}|auto")
MAX_PROMPT_CHARS = 1000  # whisper takes the last 223 tokens of a prompt, about that
MAX_HOTWORDS_CHARS = 500
# What a client may set (query, `start`), as the session's record keeps it.
SETTINGS = ("encoding", "sample_rate", "interim", "end_silence", "language", "prompt",
            "hotwords", "events", "diarize")  # fmt: skip


class ClientError(Exception):
    """A problem with what the client sent. The session goes on unless `fatal`."""

    def __init__(
        self, code: str, message: str, *, fatal: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = fatal
        self.retry_after = retry_after  # seconds, where waiting is what helps

    def reply(self, seq: int | None = None) -> dict[str, Any]:
        return error_reply(self.code, self.message, seq, self.retry_after)


def error_reply(
    code: str, message: str, seq: int | None = None, retry_after: float | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"status": "error", "error": message, "code": code}
    if seq is not None:
        out["seq"] = seq
    if retry_after is not None:
        out["retry_after"] = retry_after
    return out


@dataclass(frozen=True)
class AudioFormat:
    """What the client streams; set by query parameters or the first `start` frame."""

    encoding: str = "pcm_s16le"
    sample_rate: int = 16000
    interim: bool = True
    end_silence: float | None = None  # None: the transcribers' HARK_END_SILENCE
    language: str | None = None  # None: the transcribers' HARK_LANGUAGE; "auto": detect
    prompt: str = ""  # earlier text: names, spelling, style
    hotwords: str = ""  # words to expect
    events: bool = False  # speech_started / utterance_end replies
    diarize: bool = False  # a speaker label on each final and its words

    def public(self) -> dict[str, Any]:
        """The settings as the greeting and the session's record show them (those left
        at their defaults, where new, left out)."""
        out: dict[str, Any] = {"encoding": self.encoding, "sample_rate": self.sample_rate,
                               "interim": self.interim}  # fmt: skip
        if self.end_silence is not None:
            out["end_silence"] = self.end_silence
        if self.language is not None:
            out["language"] = self.language
        if self.prompt:
            out["prompt"] = self.prompt
        if self.hotwords:
            out["hotwords"] = self.hotwords
        if self.events:
            out["events"] = True
        if self.diarize:
            out["diarize"] = True
        return out

    def updated(self, params: dict[str, Any]) -> AudioFormat:
        """This format with `params` (query strings or JSON values) applied and checked."""
        fmt = self
        if "encoding" in params:
            encoding = params["encoding"]
            if encoding not in ENCODINGS:
                raise ClientError(
                    "bad_setting", f"encoding {encoding!r} is not one of {', '.join(ENCODINGS)}"
                )
            fmt = replace(fmt, encoding=encoding)
            if encoding in TELEPHONE and "sample_rate" not in params:
                fmt = replace(fmt, sample_rate=TELEPHONE_RATE)
        if "sample_rate" in params:
            rate = _int(params["sample_rate"])
            if rate is None or rate not in SAMPLE_RATES:
                raise ClientError(
                    "bad_setting",
                    f"sample_rate {params['sample_rate']!r} is not an integer in 8000..48000",
                )
            fmt = replace(fmt, sample_rate=rate)
        if "interim" in params:
            interim = _bool(params["interim"])
            if interim is None:
                raise ClientError("bad_setting", f"interim {params['interim']!r} is not a boolean")
            fmt = replace(fmt, interim=interim)
        if "end_silence" in params:
            low, high = END_SILENCE_S
            seconds = _float(params["end_silence"])
            if seconds is None or not low <= seconds <= high:
                raise ClientError("bad_setting", f"end_silence {params['end_silence']!r} is not "
                                  f"a number of seconds in {low}..{high}")  # fmt: skip
            fmt = replace(fmt, end_silence=seconds)
        if "language" in params:
            language = params["language"]
            if not isinstance(language, str) or not LANGUAGE.fullmatch(language):
                raise ClientError("bad_setting", f"language {str(language)[:20]!r} is not a "
                                  "language code (en, de, fr, ...) or auto")  # fmt: skip
            fmt = replace(fmt, language=language)
        if "prompt" in params:
            fmt = replace(fmt, prompt=_text(params, "prompt", MAX_PROMPT_CHARS))
        if "hotwords" in params:
            fmt = replace(fmt, hotwords=_text(params, "hotwords", MAX_HOTWORDS_CHARS))
        if "events" in params:
            events = _bool(params["events"])
            if events is None:
                raise ClientError("bad_setting", f"events {params['events']!r} is not a boolean")
            fmt = replace(fmt, events=events)
        if "diarize" in params:
            diarize = _bool(params["diarize"])
            if diarize is None:
                raise ClientError("bad_setting", f"diarize {params['diarize']!r} is not a boolean")
            if diarize and not diarize_available():
                raise ClientError("bad_setting", f"diarize=true needs {DIARIZE_EXTRA}")
            fmt = replace(fmt, diarize=diarize)
        return fmt


CONTROL_TYPES = ("start", "finalize", "close", "keepalive")


def parse_control(text: str) -> dict[str, Any]:
    """A text frame as a control message with a known `type`, or ClientError."""
    try:
        msg = json.loads(text)
    except ValueError:
        raise ClientError("bad_json", "text frame is not valid JSON") from None
    except RecursionError:  # 100,000 `[`: nested deeper than the parser goes
        raise ClientError("bad_json", "text frame is nested too deeply") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ClientError("bad_message", "a control message is a JSON object with a string 'type'")
    if msg["type"] not in CONTROL_TYPES:
        raise ClientError(
            "unknown_message",
            f"unknown message type {msg['type'][:64]!r}; known: {', '.join(CONTROL_TYPES)}",
        )
    return msg


def _text(params: dict[str, Any], name: str, most: int) -> str:
    text = params[name]
    if not isinstance(text, str) or len(text) > most or not text.isprintable():
        raise ClientError(
            "bad_setting", f"{name} must be a string of at most {most} printable characters"
        )
    return text


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= 6:
        return int(value)
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and len(value) <= 12:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    return None
