"""The gateway's HTTP API as an OpenAPI 3.1 document, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from services.gateway.protocol import ENCODINGS
from shared.openapi import (
    ADMIN_ERRORS,
    BOOL,
    INT,
    METRICS,
    NUM,
    STR,
    document,
    error,
    json_body,
    maybe,
    obj,
    text_body,
)

COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}

SESSION = obj(
    ["session_id", "client_id", "protocol", "transcriber", "chunks", "last_seq"],
    session_id=STR, client_id=STR, transcriber=STR,
    protocol={"enum": ["ws", "vosk", "original", "file", "deepgram"]},
    encoding=STR, sample_rate=INT, interim=BOOL, opened_at=NUM, age_s=NUM, chunks=INT, bytes=INT,
    finals=INT, errors=INT, last_seq=INT, delivered_seq=INT, queued_replies=INT, closing=BOOL,
)  # fmt: skip
SUMMARY = obj(
    ["status", "session_id", "chunks", "finals", "last_seq", "complete"],
    status={"const": "closed"}, session_id=STR, chunks=INT, bytes=INT, finals=INT, last_seq=INT,
    complete=BOOL, reason=STR,
)  # fmt: skip
STATS = obj(
    ["gateway", "sessions", "store_lag_ms", "chunks", "audio_bytes", "results", "errors",
     "live_transcribers"],
    gateway=STR, accepting=BOOL, uptime_s=NUM, sessions=INT, store_lag_ms=NUM, chunks=INT,
    audio_bytes=INT,
    results=COUNTS, errors=COUNTS, live_transcribers={"type": "array", "items": STR},
    draining_transcribers={"type": "array", "items": STR}, subscriptions=INT,
)  # fmt: skip
READY = obj(
    ["status", "redis", "transcribers", "file_descriptors"],
    status=STR,
    redis=BOOL,
    transcribers={"type": "array", "items": STR},
    file_descriptors=obj(["open", "limit"], open=INT, limit=INT),
)
SESSION_ID = {"name": "session_id", "in": "path", "required": True, "schema": STR}
UPGRADE = {
    "101": {"description": "WebSocket upgrade"},
    "400": text_body("text/plain", "not a WebSocket request"),
    "401": error("API keys are set and the handshake carries no valid key or token"),
    "403": error("forbidden_origin: the Origin is not in HARK_ALLOWED_ORIGINS"),
    "429": {**error("too_many_sessions: the API key or the address holds HARK_LIMIT_SESSIONS"),
            "headers": {"Retry-After": {"schema": STR, "description": "seconds"}}},
    "503": {**error("overloaded: HARK_MAX_SESSIONS reached, or every transcriber is more "
                    "than HARK_MAX_LAG behind"),
            "headers": {"Retry-After": {"schema": STR, "description": "seconds"}}},
}  # fmt: skip

OPENAI_ERROR = obj(
    ["error"],
    error=obj(
        ["message", "type", "param", "code"],
        message=STR,
        type=STR,
        param=maybe("string"),
        code=maybe("string"),
    ),
)
RETRY = {"headers": {"Retry-After": {"schema": STR, "description": "seconds"}}}


def openai_error(description: str) -> dict[str, Any]:
    return json_body(OPENAI_ERROR, description)


WORD = obj(["word", "start", "end"], word=STR, start=NUM, end=NUM)
SEGMENT = obj(
    ["id", "start", "end", "text"], id=INT, seek=INT, start=NUM, end=NUM, text=STR,
    tokens={"type": "array", "items": INT}, temperature=NUM, avg_logprob=NUM,
    compression_ratio=NUM, no_speech_prob=NUM,
)  # fmt: skip
TRANSCRIPTION = {"oneOf": [
    obj(["text"], text=STR),  # json
    obj(["task", "language", "duration", "text"], task={"const": "transcribe"}, language=STR,
        duration=NUM, text=STR, segments={"type": "array", "items": SEGMENT},
        words={"type": "array", "items": WORD}),  # verbose_json
]}  # fmt: skip
TRANSCRIPTIONS = {"post": {
    "summary": "A file's transcript, as OpenAI's POST /v1/audio/transcriptions answers "
               "(see the README, 'Files: OpenAI's transcription API')",
    "security": [{"apiKey": []}, {}],
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": obj(
        ["file", "model"],
        file={"type": "string", "contentMediaType": "application/octet-stream",
              "description": "audio FFmpeg reads, up to HARK_MAX_FILE_BYTES"},
        model={**STR, "description": "accepted; the engine is hark's"},
        language={**STR, "description": "a language code, or auto"},
        prompt=STR, hotwords={**STR, "description": "hark's own: words and names to expect"},
        diarize={**STR, "description": "hark's own: true for speaker labels"},
        response_format={"enum": ["json", "text", "srt", "vtt", "verbose_json"]},
        **{"timestamp_granularities[]": {"type": "array",
                                         "items": {"enum": ["word", "segment"]}}},
    )}}},
    "responses": {
        "200": {"description": "json and verbose_json as JSON; text, srt and vtt as text",
                "content": {"application/json": {"schema": TRANSCRIPTION},
                            "text/plain": {"schema": STR}}},
        "400": openai_error("not multipart, no file or model, a bad setting, or not audio "
                            "(code invalid_file_format)"),
        "401": openai_error("API keys are set and the request carries no valid key"),
        "403": openai_error("forbidden_origin: the Origin is not in HARK_ALLOWED_ORIGINS"),
        "413": openai_error("the file is larger than HARK_MAX_FILE_BYTES"),
        "429": {**openai_error("the API key or the address holds HARK_LIMIT_SESSIONS"), **RETRY},
        "503": {**openai_error("overloaded (as a handshake), or a piece of the file could not "
                               "be finished: try again"), **RETRY},
    },
}}  # fmt: skip

DG_ERROR = obj(["err_code", "err_msg"], err_code=STR, err_msg=STR, request_id=STR)
LISTEN = {"get": {
    "summary": "Deepgram's live streaming protocol (see the README, 'Deepgram's clients')",
    "parameters": [{"name": name, "in": "query", "schema": STR} for name in (
        "model", "encoding", "sample_rate", "channels", "language", "interim_results",
        "endpointing", "utterance_end_ms", "vad_events", "keywords", "keyterm", "diarize")],
    "security": [{"deepgramKey": []}, {}],
    "responses": {
        "101": {"description": "WebSocket upgrade"},
        "400": json_body(DG_ERROR, "a setting hark cannot take (an encoding, channels > 1, "
                         "a rate outside 8000..48000), or not a WebSocket request"),
        "401": json_body(DG_ERROR, "API keys are set and the handshake carries no valid key"),
        "403": json_body(DG_ERROR, "the Origin is not in HARK_ALLOWED_ORIGINS"),
        "429": {**json_body(DG_ERROR, "the API key or the address holds HARK_LIMIT_SESSIONS"),
                **RETRY},
        "503": {**json_body(DG_ERROR, "overloaded, as a /ws handshake"), **RETRY},
    },
}}  # fmt: skip

PATHS: dict[str, Any] = {
    "/": {"get": {
        "summary": "The web page; the original service's JSON status with Accept: application/json",
        "responses": {"200": {"description": "the page, or the status", "content": {
            "text/html": {"schema": STR},
            "application/json": {"schema": obj(["message", "service"], message=STR, service=STR)},
        }}},
    }},
    "/ws": {"get": {
        "summary": "The native WebSocket protocol (see the README, 'Client protocol')",
        "parameters": [
            {"name": "encoding", "in": "query", "schema": {"enum": list(ENCODINGS)}},
            {"name": "sample_rate", "in": "query", "schema": INT},
            {"name": "interim", "in": "query", "schema": STR},
            {"name": "end_silence", "in": "query", "schema": NUM,
             "description": "seconds of silence that end an utterance (0.1..5)"},
            {"name": "language", "in": "query", "schema": STR,
             "description": "a language code (en, de, ...) or auto: detected per utterance"},
            {"name": "prompt", "in": "query", "schema": STR,
             "description": "earlier text: names, spelling, style (up to 1000 characters)"},
            {"name": "hotwords", "in": "query", "schema": STR,
             "description": "words and names to expect (up to 500 characters)"},
            {"name": "events", "in": "query", "schema": STR,
             "description": "true: speech_started and utterance_end replies"},
            {"name": "diarize", "in": "query", "schema": STR,
             "description": "true: a speaker label on every final and word (diarize extra)"},
            {"name": "session_id", "in": "query", "schema": STR, "description": "to resume"},
            {"name": "resume_token", "in": "query", "schema": STR, "description": "to resume"},
            {"name": "token", "in": "query", "schema": STR,
             "description": "a token from POST /token (or the subprotocol hark-token.<token>)"},
        ],
        "security": [{"apiKey": []}, {"token": []}, {}],
        "responses": UPGRADE,
    }},
    "/vosk": {"get": {"summary": "The vosk-server WebSocket protocol", "responses": UPGRADE,
                      "security": [{"apiKey": []}, {"token": []}, {}]}},
    "/original": {"get": {"summary": "The original service's protocol: no greeting, "
                          "{status: received, size}, then {client_id, text, status: "
                          "transcript}", "responses": UPGRADE,
                          "security": [{"apiKey": []}, {"token": []}, {}]}},
    "/v1/audio/transcriptions": TRANSCRIPTIONS,
    "/v1/listen": LISTEN,
    "/token": {"post": {
        "summary": "A short-lived token for a browser's WebSocket, for an API key",
        "security": [{"apiKey": []}],
        "requestBody": {"required": False, "content": {"application/json": {
            "schema": obj([], subject=STR)}}},
        "responses": {
            "200": json_body(obj(["token", "protocol", "subject", "expires_in"], token=STR,
                                 protocol=STR, subject=STR, expires_in=NUM),
                             "use as ?token= or as the subprotocol `protocol`"),
            "400": error("the body is not {\"subject\": \"...\"}"),
            "401": error("no valid API key"),
            "404": error("no API keys are set: the gateway is open"),
        },
    }},
    "/health": {"get": {"summary": "Liveness", "responses": {
        "200": json_body(obj(["status"], status={"const": "ok"}), "the loop answers")}}},
    "/ready": {"get": {"summary": "Readiness: Redis answers, a transcriber is live, and "
                       "the gateway is not short of file descriptors", "responses": {
        "200": json_body(READY, "ready"),
        "503": json_body(READY, "not ready"),
    }}},
    "/config": {"get": {"summary": "The effective settings, secrets redacted", "responses": {
        "200": json_body(obj(["port", "engine"], port=INT, engine=STR,
                             redis_url=maybe("string"), admin_token=maybe("string")),
                         "every setting")}}},
    "/metrics": {"get": {"summary": "Prometheus metrics", "responses": METRICS}},
    "/stats": {"get": {"summary": "This gateway now and since it started",
                       "responses": {"200": json_body(STATS, "the figures")}}},
    "/sessions": {"get": {"summary": "The sessions open on this gateway",
                          "security": [{"admin": []}, {}], "responses": {
        "200": json_body(obj(["sessions"], sessions={"type": "array", "items": SESSION}),
                         "oldest first"), **ADMIN_ERRORS}}},
    "/sessions/{session_id}": {
        "parameters": [SESSION_ID],
        "get": {"summary": "One open session", "security": [{"admin": []}, {}], "responses": {
            "200": json_body(SESSION, "the session"), **ADMIN_ERRORS,
            "404": error("no such session open on this gateway")}},
        "delete": {
            "summary": "End a session: its audio flushed, the client told, a normal close",
            "security": [{"admin": []}, {}],
            "responses": {"200": json_body(SUMMARY, "the summary the client was sent (of a "
                                           "session closing already: of that close, once "
                                           "done, with its reason)"),
                          **ADMIN_ERRORS, "404": error("no such session open here")},
        },
    },
}  # fmt: skip

OPENAPI = document(
    "hark gateway",
    "Streaming speech-to-text: WebSocket sessions in, transcripts out. With API keys "
    "set, a handshake needs `Authorization: Bearer <key>` or a token from POST /token. "
    "The session endpoints need `Authorization: Bearer <HARK_ADMIN_TOKEN>` when one is "
    "set, and a loopback client otherwise.",
    PATHS,
)
