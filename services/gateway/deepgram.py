"""Deepgram's live streaming protocol on `/v1/listen`, so programs written with Deepgram's
SDKs run against hark unchanged (the SDK's base URL pointed at hark).

The query's settings map onto a hark session's (`listen_format`); audio comes in binary
frames, in the encoding named (none: a container, told by its first bytes); hark's
results go out as Deepgram's `Results` (`is_final`, `speech_final` where the utterance
ended in a pause, `from_finalize` for what a `Finalize` flushed), `SpeechStarted` with
`vad_events=true`, `UtteranceEnd` after a final that ended in a pause with
`utterance_end_ms`; `CloseStream` flushes, answers `Metadata` and closes (1000). The key
comes as Deepgram sends it: `Authorization: Token KEY` (or `Bearer KEY`, or the
subprotocols `token, KEY`), checked against hark's keys. The same transcribers, with the
same guarantees, as `/ws`; no resume (Deepgram has none). What hark cannot honour is
ignored, as Deepgram ignores an option it does not know: see the README's table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from multidict import MultiMapping
from redis.exceptions import RedisError

from services.gateway.gateway import Gateway, refuse
from services.gateway.protocol import END_SILENCE_S, AudioFormat, ClientError
from services.gateway.session import Session, word_speakers
from shared.http_errors import described, json_error
from shared.messages import SpeechEvent, Transcript

log = logging.getLogger(__name__)

SCHEMES = ("token", "bearer")  # Authorization: Token KEY, as Deepgram's SDKs send it
# Deepgram's encodings -> hark's (linear32, amr-nb, amr-wb, speex and g729: refused).
ENCODINGS = {"linear16": "pcm_s16le", "mulaw": "mulaw", "alaw": "alaw", "flac": "flac",
             "opus": "ogg", "ogg-opus": "ogg"}  # fmt: skip
CHANNEL = [0, 1]  # channel_index: this channel, of how many
_WORD_EDGES = re.compile(r"^\W+|\W+$")


@dataclass(frozen=True)
class Listen:
    """What a Deepgram client asked for beyond a hark session's settings."""

    model: str = "hark"
    vad_events: bool = False  # SpeechStarted messages
    utterance_end: bool = False  # UtteranceEnd messages (utterance_end_ms given)


def listen_format(query: MultiMapping[str]) -> tuple[AudioFormat, Listen]:
    """A session's settings from Deepgram's query parameters; ClientError `bad_setting`
    for one hark cannot take (the handshake is refused with 400, as Deepgram does)."""
    params: dict[str, Any] = {"interim": "false", "events": "true"}  # Deepgram's default
    encoding = query.get("encoding")
    if encoding is None:
        params["encoding"] = "auto"  # containerised audio: Deepgram reads its header
    elif encoding in ENCODINGS:
        params["encoding"] = ENCODINGS[encoding]
    else:
        raise ClientError("bad_setting", f"encoding {encoding[:20]!r} is not one hark takes: "
                          f"{', '.join(ENCODINGS)}, or none for a container")  # fmt: skip
    if "sample_rate" in query:
        params["sample_rate"] = query["sample_rate"]
    if query.get("channels", "1") != "1" or _true(query.get("multichannel", "false")):
        raise ClientError("bad_setting", "hark takes one channel of audio (channels=1)")
    if "interim_results" in query:
        params["interim"] = query["interim_results"]
    language = query.get("language")
    if language:
        # en-US -> en; multi: detected per utterance.
        params["language"] = "auto" if language == "multi" else language.split("-")[0].lower()
    endpointing = query.get("endpointing")
    if endpointing is not None and endpointing.lower() != "true":
        low, high = END_SILENCE_S
        if endpointing.lower() == "false":
            params["end_silence"] = high  # no endpointing: the longest silence hark waits
        elif endpointing.isdigit():
            params["end_silence"] = min(high, max(low, int(endpointing) / 1000))
        else:
            raise ClientError("bad_setting", f"endpointing {endpointing[:20]!r} is not a number "
                              "of milliseconds, true or false")  # fmt: skip
    # keywords (word:boost) and keyterm: words to expect.
    words = [k.rsplit(":", 1)[0] for k in query.getall("keywords", [])]
    words += query.getall("keyterm", [])
    if words:
        params["hotwords"] = ", ".join(words)
    if _true(query.get("diarize")) or query.get("diarize_model"):
        params["diarize"] = "true"  # bad_setting where hark's diarize extra is missing
    fmt = AudioFormat().updated(params)
    listen = Listen(model=query.get("model", "hark")[:64],
                    vad_events=_true(query.get("vad_events")),
                    utterance_end="utterance_end_ms" in query)  # fmt: skip
    return fmt, listen


def _true(value: str | None) -> bool:
    return value is not None and value.lower() == "true"


class DeepgramSession(Session):
    """A session that answers in Deepgram's messages."""

    PROTOCOL = "deepgram"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listen = Listen()
        self.engine = ""
        self.sha256 = hashlib.sha256()  # of the audio as it came (Metadata)
        self.created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.request_id = str(uuid.UUID(hex=self.session_id))
        self._ends: set[float] = set()  # where utterances ended in a pause
        self._speech_at = 0.0  # where the speech now under way started
        self._finalizing = False  # a Finalize's flush is under way

    def say_hello(self) -> None:
        pass  # Deepgram says nothing until there is something to say

    def ack_reply(self, seq: int, size: int) -> None:
        pass  # no acks in Deepgram's protocol

    def finalize(self) -> None:
        self._finalizing = True

    def finalized_reply(self, seq: int) -> None:
        self._finalizing = False  # its finals are sent: what follows is speech again

    def event_reply(self, event: SpeechEvent) -> None:
        if event.event == "speech_started":
            self._speech_at = event.at
            if self.listen.vad_events:
                self.send({"type": "SpeechStarted", "channel": CHANNEL, "timestamp": event.at})
        else:
            self._ends.add(event.at)  # its final follows: speech_final

    def transcript_reply(self, t: Transcript, replayed: bool) -> None:
        speech_final = from_finalize = False
        if t.final:
            speech_final = t.end in self._ends
            self._ends.discard(t.end or 0.0)
            from_finalize = self._finalizing and not speech_final
            start = self._speech_at if t.start is None else t.start
            end = self.audio_s if t.end is None else t.end
        else:
            start, end = self._speech_at, self.audio_s
        words = [{"word": _WORD_EDGES.sub("", w.strip()).lower(), "start": s, "end": e,
                  "confidence": round(p, 4), "punctuated_word": w.strip()}
                 for w, s, e, p in t.words]  # fmt: skip
        if t.speaker is not None:  # Deepgram's speakers are numbers from 0: S1 is 0
            for word, speaker in zip(words, word_speakers(t), strict=True):
                word["speaker"] = int(str(speaker)[1:]) - 1
        confidence = sum(w["confidence"] for w in words) / len(words) if words else 0.0
        alternative: dict[str, Any] = {
            "transcript": t.text.strip(),
            "confidence": round(confidence, 4),
            "words": words,
        }
        if t.language is not None:
            alternative["languages"] = [t.language]
        self.send({
            "type": "Results", "channel_index": CHANNEL, "start": round(start, 3),
            "duration": round(max(0.0, end - start), 3), "is_final": t.final,
            "speech_final": speech_final, "from_finalize": from_finalize,
            "channel": {"alternatives": [alternative]}, "metadata": self._model_metadata(),
        })  # fmt: skip
        if speech_final and self.listen.utterance_end:
            last = words[-1]["end"] if words else end
            self.send({"type": "UtteranceEnd", "channel": CHANNEL, "last_word_end": last})

    def send(self, reply: dict[str, Any]) -> None:
        if reply.get("status") == "error":  # hark's own errors, in Deepgram's shape
            reply = {"type": "Error", "variant": reply.get("code", "error"),
                     "description": reply.get("error", ""), "message": ""}  # fmt: skip
        super().send(reply)

    def _model_metadata(self) -> dict[str, Any]:
        return {"request_id": self.request_id, "model_uuid": _model_uuid(self.engine),
                "model_info": {"name": self.listen.model, "version": "hark",
                               "arch": self.engine}}  # fmt: skip

    def metadata(self) -> dict[str, Any]:
        """The last message, at CloseStream: what the stream was."""
        model = _model_uuid(self.engine)
        return {
            "type": "Metadata", "transaction_key": "deprecated", "request_id": self.request_id,
            "sha256": self.sha256.hexdigest(), "created": self.created,
            "duration": round(self.audio_s, 3), "channels": 1, "models": [model],
            "model_info": {model: {"name": self.listen.model, "version": "hark",
                                   "arch": self.engine}},
        }  # fmt: skip


def _model_uuid(engine: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"hark:{engine}"))


# -- the endpoint -----------------------------------------------------------------------


async def handle_listen(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    with _dg_errors(), gateway.admitted(request, schemes=SCHEMES) as ws:
        try:
            fmt, listen = listen_format(request.query)
            gateway.check_language(fmt)
        except ClientError as exc:
            gateway.metrics.errors.labels(exc.code).inc()
            raise json_error(web.HTTPBadRequest, exc.code, exc.message) from None
        return await _serve(gateway, request, ws, fmt, listen)


@contextlib.contextmanager
def _dg_errors() -> Iterator[None]:
    """A refused handshake as Deepgram refuses one: its status, a JSON body with
    `err_code` and `err_msg`, and the `dg-error` header."""
    try:
        yield
    except web.HTTPException as exc:
        code, message, headers = described(exc)
        headers["dg-error"] = message.encode("ascii", "replace").decode()  # a header: ASCII
        body = {"err_code": code.upper(), "err_msg": message, "request_id": str(uuid.uuid4())}
        raise _status(exc.status)(text=json.dumps(body), content_type="application/json",
                                  headers=headers) from None  # fmt: skip


def _status(status: int) -> type[web.HTTPException]:
    for kind in (web.HTTPBadRequest, web.HTTPUnauthorized, web.HTTPForbidden,
                 web.HTTPTooManyRequests, web.HTTPServiceUnavailable):  # fmt: skip
        if kind.status_code == status:
            return kind
    return web.HTTPInternalServerError


async def _serve(
    gateway: Gateway, request: web.Request, ws: web.WebSocketResponse, fmt: AudioFormat,
    listen: Listen,
) -> web.StreamResponse:  # fmt: skip
    await ws.prepare(request)
    try:
        if not gateway.accepting:
            raise ClientError("shutting_down", "the gateway is shutting down; reconnect")
        session = await gateway.open_session(ws, request, fmt, DeepgramSession)
    except (ClientError, RedisError) as exc:
        error = exc if isinstance(exc, ClientError) else ClientError(
            "unavailable", "the session could not be opened; try again")  # fmt: skip
        gateway.metrics.errors.labels(error.code).inc()
        reply = {"type": "Error", "variant": error.code, "description": error.message,
                 "message": ""}  # fmt: skip
        return await refuse(ws, reply, WSCloseCode.TRY_AGAIN_LATER)
    assert isinstance(session, DeepgramSession)
    session.listen, session.engine = listen, gateway.settings.engine
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                if not msg.data:  # an empty frame: Deepgram's old way to CloseStream
                    await _close_stream(gateway, session)
                    break
                session.sha256.update(msg.data)
                try:
                    await gateway.on_audio(session, msg.data)
                except ClientError as exc:
                    session.client_error(exc.code)
                    session.send(session.error_reply(exc))
            elif msg.type == WSMsgType.TEXT:
                kind = _type(msg.data)
                if kind == "CloseStream":
                    await _close_stream(gateway, session)
                    break
                if kind == "Finalize":
                    session.finalize()
                    with contextlib.suppress(ClientError, RedisError):
                        await gateway.control(session, "finalize")
                elif kind != "KeepAlive":
                    session.send({"type": "Error", "variant": "SchemaError",
                                  "description": "a text message is a JSON object whose type "
                                  "is KeepAlive, Finalize or CloseStream",
                                  "message": msg.data[:1000]})  # fmt: skip
            else:
                break
    finally:
        await gateway.end(session)
    return ws


def _type(text: str) -> str | None:
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError):
        return None
    kind = msg.get("type") if isinstance(msg, dict) else None
    return kind if isinstance(kind, str) else None


async def _close_stream(gateway: Gateway, session: DeepgramSession) -> None:
    """Flush, send what the stream held, then Metadata; the close (1000) follows."""
    began = time.monotonic()
    try:
        complete = await gateway.close_flushed(session)
    except (ClientError, RedisError):
        complete = False
    if not complete:  # Deepgram has no word for it; a client must still hear it
        missing = session.missing()
        session.send({"type": "Error", "variant": "incomplete",
                      "description": f"no final for chunks {missing['missing_seqs']}: "
                      f"{missing['why']}", "message": ""})  # fmt: skip
    session.send(session.metadata())
    session.close_reason = "closed_by_client"
    log.debug("session %s: CloseStream answered in %.2f s", session.session_id,
              time.monotonic() - began)  # fmt: skip
