"""`POST /v1/audio/transcriptions`: OpenAI's file transcription API on hark's sessions.

A program written against OpenAI's API (its `openai` package, or any client of that
HTTP API) points its base URL at hark and gets the same answers. The file is decoded
to 16 kHz PCM (FFmpeg, through PyAV), cut at pauses into pieces of about a minute,
and each piece is streamed through a session of its own, as a WebSocket client's
audio is: the same mailboxes, acks, replays after a transcriber crash, and moves off
a transcriber that stays down. The pieces go to the live transcribers side by side,
so an hour of audio is spread over all of them; their finals, shifted to the file's
time, make the answer. The API key, the per-key and per-address limits and the
admission control are the WebSocket's.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from aiohttp import BodyPartReader, web

from services.gateway.decode import OUT_RATE as RATE
from services.gateway.decode import Pcm, decode_file
from services.gateway.gateway import Gateway
from services.gateway.protocol import AudioFormat, ClientError
from services.gateway.session import Session, word_speakers
from shared.http_errors import described
from shared.messages import Transcript

log = logging.getLogger(__name__)

PIECE_S = 60.0  # a piece's length, about: cut at the quietest moment near it
SEARCH_S = 10.0  # how far before that point the quietest moment is looked for
QUIET_WINDOW_S = 0.3  # the stretch whose loudness is judged
CHUNK_S = 1.0  # the audio a piece's session takes per chunk
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
# A file's audio formats, as OpenAI names them in its error (FFmpeg takes more).
SUPPORTED = "flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm"
# The answer to a piece that does not come whole, in seconds beyond its audio.
PIECE_GRACE_S = 30.0


class ApiError(Exception):
    """An error as OpenAI's API answers it: HTTP status, message, type, param, code."""

    def __init__(
        self, status: int, message: str, *, kind: str = "invalid_request_error",
        param: str | None = None, code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or {}

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.code}}  # fmt: skip
        return web.json_response(body, status=self.status, headers=self.headers)


@dataclass
class Request:
    """What a transcription request asks for."""

    audio: bytes
    filename: str
    model: str = ""
    language: str | None = None
    prompt: str = ""
    hotwords: str = ""
    diarize: bool = False
    response_format: str = "json"
    granularities: list[str] = field(default_factory=lambda: ["segment"])


async def handle(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """The endpoint: every error in OpenAI's shape."""
    try:
        with _http_errors():
            if not gateway.accepting:
                raise ApiError(503, "the gateway is shutting down; try again", kind="server_error",
                               code="shutting_down", headers={"Retry-After": "2"})  # fmt: skip
            with gateway.let_in(request):
                asked = await _read(request, gateway.settings.max_file_bytes)
                fmt = _format(asked)
                pcm = await asyncio.to_thread(_decoded, asked.audio)
                finals = await transcribe(gateway, request, fmt, pcm)
        return respond(asked, finals, len(pcm) / RATE, gateway.settings.language)
    except ApiError as exc:
        if exc.status >= 500:
            log.warning("transcription of %s failed: %s", request.remote, exc.message)
        return exc.response()


@contextlib.contextmanager
def _http_errors() -> Any:
    """hark's own HTTP errors (401, 403, 429, 503 from the admission) in OpenAI's shape."""
    try:
        yield
    except web.HTTPException as exc:
        code, message, headers = described(exc)
        kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(
            exc.status, "server_error" if exc.status >= 500 else "invalid_request_error"
        )
        raise ApiError(exc.status, message, kind=kind, code=code, headers=headers) from None


async def _read(request: web.Request, most: int) -> Request:
    """The multipart form, the file read up to `most` bytes (413 past it)."""
    if not request.content_type.startswith("multipart/"):
        raise ApiError(400, "the request must be multipart/form-data with a 'file' part")
    if request.content_length is not None and request.content_length > most + 64 * 1024:
        raise _too_large(most)
    reader = await request.multipart()
    asked = Request(b"", "")
    fields: dict[str, list[str]] = {}
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue  # nested multipart: not OpenAI's form
        if part.name == "file":
            asked.filename = part.filename or "file"
            asked.audio = await _read_file(part, most)
        elif part.name:
            fields.setdefault(part.name.removesuffix("[]"), []).append(
                (await part.read(decode=True)).decode("utf-8", "replace")[:4096]
            )
    if not asked.filename:
        raise ApiError(400, "you must provide a 'file'", param="file")
    if not asked.audio:
        raise ApiError(400, "the file is empty", param="file")
    first = {name: values[0] for name, values in fields.items()}
    asked.model = first.get("model", "")
    if not asked.model:
        raise ApiError(400, "you must provide a model parameter", param="model")
    asked.language = first.get("language") or None
    asked.prompt = first.get("prompt", "")
    asked.hotwords = first.get("hotwords", "")  # hark's own (openai: extra_body=...)
    asked.diarize = first.get("diarize", "false").lower() == "true"  # hark's own, too
    asked.response_format = first.get("response_format", "json")
    if asked.response_format not in FORMATS:
        raise ApiError(400, f"response_format {asked.response_format!r} is not one of "
                       f"{', '.join(FORMATS)}", param="response_format")  # fmt: skip
    asked.granularities = fields.get("timestamp_granularities", ["segment"])
    unknown = set(asked.granularities) - set(GRANULARITIES)
    if unknown:
        raise ApiError(400, f"timestamp_granularities {sorted(unknown)} are not word or segment",
                       param="timestamp_granularities")  # fmt: skip
    return asked


async def _read_file(part: BodyPartReader, most: int) -> bytes:
    out = io.BytesIO()
    while chunk := await part.read_chunk(256 * 1024):
        if out.tell() + len(chunk) > most:
            raise _too_large(most)
        out.write(chunk)
    return out.getvalue()


def _too_large(most: int) -> ApiError:
    return ApiError(413, f"Maximum content size limit ({most}) exceeded (HARK_MAX_FILE_BYTES)",
                    param="file", code="file_too_large")  # fmt: skip


def _format(asked: Request) -> AudioFormat:
    """The pieces' session settings; a bad one is a 400 naming it."""
    params: dict[str, Any] = {"interim": False}
    for name in ("language", "prompt", "hotwords", "diarize"):
        value = getattr(asked, name)
        if value:
            params[name] = value
    try:
        return AudioFormat().updated(params)
    except ClientError as exc:
        raise ApiError(400, exc.message, param=exc.message.split(" ", 1)[0]) from None


def _decoded(data: bytes) -> Pcm:
    """The file's audio at 16 kHz; OpenAI's 400 where it is not audio FFmpeg reads."""
    try:
        return decode_file(data)
    except ClientError as exc:
        raise ApiError(400, f"{exc.message}. Supported formats: [{SUPPORTED}]", param="file",
                       code="invalid_file_format") from None  # fmt: skip


def pieces(pcm: Pcm, piece_s: float = PIECE_S) -> list[tuple[int, int]]:
    """Where to cut the audio: (start, end) samples of pieces of about `piece_s`, each
    cut at the quietest stretch of the last SEARCH_S before its end (a pause, where
    there is one), so no word is cut in two."""
    total, size = len(pcm), int(piece_s * RATE)
    if total <= size * 1.5:
        return [(0, total)]
    window = int(QUIET_WINDOW_S * RATE)
    cuts, start = [], 0
    while total - start > size * 1.5:
        lo = start + size - int(SEARCH_S * RATE)
        span = pcm[lo : start + size + window].astype(np.float64)
        energy = np.concatenate([[0.0], np.cumsum(span * span)])
        power = energy[window:] - energy[:-window]  # of each stretch, by where it starts
        cut = lo + int(np.argmin(power[: size - (lo - start)])) + window // 2
        cuts.append((start, cut))  # in the middle of the quietest stretch
        start = cut
    cuts.append((start, total))
    return cuts


class FileSession(Session):
    """A piece's session: no socket; its finals are kept for the answer."""

    PROTOCOL = "file"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.finals: list[Transcript] = []
        self.failure: str | None = None

    def send_text(self, text: str, *, ack: bool = False) -> None:
        pass  # acks and the rest: nobody to tell

    def send(self, reply: dict[str, Any]) -> None:
        if reply.get("status") == "error" and self.failure is None:
            self.failure = f"{reply.get('code')}: {reply.get('error')}"

    def transcript_reply(self, t: Transcript, replayed: bool) -> None:
        if t.final:
            self.finals.append(t)


class _NoSocket:
    """What a FileSession has for a WebSocket: closed by nobody, closing nothing."""

    closed = False

    async def close(self, **_: Any) -> bool:
        return True


async def transcribe(
    gateway: Gateway, request: web.Request, fmt: AudioFormat, pcm: Pcm
) -> list[Transcript]:
    """The file's finals, in its time: its pieces through as many sessions at once as
    there are live transcribers."""
    # Speaker labels are a session's own: a diarized file goes whole through one session
    # (one transcriber), so S1 is the same voice from its start to its end.
    cuts = [(0, len(pcm))] if fmt.diarize else pieces(pcm)
    room = asyncio.Semaphore(max(1, len(gateway.router.live)))

    async def one(start: int, end: int) -> list[Transcript]:
        async with room:
            return await _piece(gateway, request, fmt, pcm[start:end], start / RATE)

    done = await asyncio.gather(*(one(a, b) for a, b in cuts), return_exceptions=True)
    for result in done:
        if isinstance(result, BaseException):
            raise result
    log.info("a file of %.0f s transcribed in %d pieces", len(pcm) / RATE, len(cuts))
    return [t for result in done for t in cast(list[Transcript], result)]


async def _piece(
    gateway: Gateway, request: web.Request, fmt: AudioFormat, pcm: Pcm, offset: float
) -> list[Transcript]:
    """One piece through a session of its own; its finals shifted by `offset` seconds."""
    try:
        session = await gateway.open_session(cast(web.WebSocketResponse, _NoSocket()), request,
                                             fmt, FileSession)  # fmt: skip
    except ClientError as exc:
        if exc.code == "bad_setting":  # a language no engine here knows
            raise ApiError(400, exc.message, param="language") from None
        raise ApiError(503, exc.message, kind="server_error", code=exc.code,
                       headers={"Retry-After": "2"}) from None  # fmt: skip
    assert isinstance(session, FileSession)
    step = min(int(CHUNK_S * RATE) * 2, gateway.settings.max_chunk_bytes) // 2 * 2
    data = pcm.astype("<i2").tobytes()
    try:
        for at in range(0, len(data), step):
            await _send(gateway, session, data[at : at + step])
        complete = await gateway.close_flushed(session)
    except ClientError as exc:
        raise ApiError(503, f"the transcription was interrupted ({exc.code}: {exc.message}); "
                       "try again", kind="server_error", code=exc.code,
                       headers={"Retry-After": "2"}) from None  # fmt: skip
    finally:
        await gateway.end(session)
    if not complete or session.failure is not None:
        why = session.failure or session.missing().get("why")
        raise ApiError(503, f"the transcription did not complete ({why}); try again",
                       kind="server_error", headers={"Retry-After": "2"})  # fmt: skip
    return [_shifted(t, offset) for t in session.finals]


async def _send(gateway: Gateway, session: FileSession, chunk: bytes) -> None:
    """A chunk into the piece's session; where the transcriber is behind or the key's
    rate is spent, again once it has caught up: a file goes as fast as hark takes it."""
    while True:
        try:
            await gateway.on_audio(session, chunk)
            return
        except ClientError as exc:
            if exc.code not in ("overloaded", "rate_limited"):
                raise
            await asyncio.sleep(exc.retry_after or 0.5)  # pacing, as a client backs off


def _shifted(t: Transcript, offset: float) -> Transcript:
    if t.start is not None and t.end is not None:
        t.start, t.end = round(t.start + offset, 3), round(t.end + offset, 3)
    t.words = [[w, round(s + offset, 3), round(e + offset, 3), p] for w, s, e, p in t.words]
    return t


# -- the answer ------------------------------------------------------------------------


def respond(
    asked: Request, finals: list[Transcript], duration: float, default_language: str
) -> web.Response:
    text = " ".join(t.text.strip() for t in finals if t.text.strip())
    fmt = asked.response_format
    if fmt == "text":
        return web.Response(text=text + "\n", content_type="text/plain")
    if fmt in ("srt", "vtt"):
        return web.Response(text=captions(finals, fmt), content_type="text/plain")
    if fmt == "json":
        return web.json_response({"text": text})
    heard = Counter(t.language for t in finals if t.language)
    language = asked.language if asked.language not in (None, "auto") else None
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": language or (heard.most_common(1)[0][0] if heard else default_language),
        "duration": round(duration, 3), "text": text,
    }  # fmt: skip
    if "segment" in asked.granularities:
        body["segments"] = [_segment(i, t) for i, t in enumerate(finals)]
    if "word" in asked.granularities:
        body["words"] = [{"word": w, "start": s, "end": e} for t in finals
                         for w, s, e, _ in t.words]  # fmt: skip
        if asked.diarize:
            speakers = [s for t in finals for s in word_speakers(t)]
            for word, speaker in zip(body["words"], speakers, strict=True):
                word["speaker"] = speaker
    return web.json_response(body)


def _segment(index: int, t: Transcript) -> dict[str, Any]:
    """A final as one of OpenAI's segments. hark's engines give no token ids nor a
    no-speech probability: `tokens` is empty and `no_speech_prob` 0 (README)."""
    probs = [p for _, _, _, p in t.words if p > 0]
    raw = t.text.encode()
    return {
        "id": index, "seek": 0, "start": t.start or 0.0, "end": t.end or 0.0,
        "text": " " + t.text.strip(), "tokens": [], "temperature": 0.0,
        "avg_logprob": round(float(np.mean(np.log(probs))), 4) if probs else 0.0,
        "compression_ratio": round(len(raw) / len(zlib.compress(raw)), 4) if raw else 0.0,
        "no_speech_prob": 0.0, **({"speaker": t.speaker} if t.speaker else {}),
    }  # fmt: skip


def captions(finals: list[Transcript], kind: str) -> str:
    """SRT or WebVTT cues, one per final, timed as the engine timed it."""
    sep = "," if kind == "srt" else "."
    cues = []
    for n, t in enumerate((t for t in finals if t.start is not None), start=1):
        span = f"{_clock(t.start or 0.0, sep)} --> {_clock(t.end or 0.0, sep)}"
        cues.append(f"{n}\n{span}\n{t.text.strip()}\n" if kind == "srt" else
                    f"{span}\n{t.text.strip()}\n")  # fmt: skip
    head = "" if kind == "srt" else "WEBVTT\n\n"
    return head + "\n".join(cues)


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{sep}{ms:03d}"


__all__ = ["ApiError", "FileSession", "handle"]
