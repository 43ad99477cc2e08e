"""The client protocol of `/ws`: reply shapes, error codes, control and start frames.

Reply shapes are the original service's (`received`, `transcript`, `error`, each with
a `status` field); hark only adds fields. Every error carries a stable `code` that
a client can act on; the same code appears in the gateway's log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from shared.config import ENCODINGS

SAMPLE_RATES = range(8000, 48001)
END_SILENCE_S = (0.1, 5.0)  # the silence that may end an utterance, seconds


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

    def public(self) -> dict[str, Any]:
        out: dict[str, Any] = {"encoding": self.encoding, "sample_rate": self.sample_rate,
                               "interim": self.interim}  # fmt: skip
        if self.end_silence is not None:
            out["end_silence"] = self.end_silence
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
