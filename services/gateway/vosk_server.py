"""The vosk-server endpoint: `/vosk` on the gateway, and every path of HARK_VOSK_PORT."""

from __future__ import annotations

import contextlib

from aiohttp import WSCloseCode, WSMsgType, web
from redis.exceptions import RedisError

from services.gateway.gateway import Gateway, refuse
from services.gateway.protocol import AudioFormat, ClientError
from services.gateway.vosk import VoskSession, parse

# vosk-server assumes 8 kHz (its VOSK_SAMPLE_RATE default) until a config says otherwise.
VOSK_FORMAT = AudioFormat(sample_rate=8000)


async def handle_vosk(gateway: Gateway, request: web.Request) -> web.StreamResponse:
    """The vosk-server protocol (see services/gateway/vosk.py) on the same sessions."""
    with gateway.admitted(request) as ws:
        return await _serve(gateway, request, ws)


async def _serve(
    gateway: Gateway, request: web.Request, ws: web.WebSocketResponse
) -> web.StreamResponse:
    await ws.prepare(request)
    try:
        if not gateway.accepting:
            raise ClientError("shutting_down", "the gateway is shutting down; reconnect")
        session = await gateway.open_session(ws, request, VOSK_FORMAT, VoskSession)
    except ClientError as exc:
        gateway.metrics.errors.labels(exc.code).inc()
        return await refuse(ws, {"error": exc.message, **exc.reply()},
                             WSCloseCode.TRY_AGAIN_LATER)  # fmt: skip
    assert isinstance(session, VoskSession)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                try:
                    await gateway.on_audio(session, msg.data)
                except ClientError as exc:
                    session.client_error(exc.code)
                    session.send({"partial": "", "error": exc.message, "code": exc.code})
                    continue
                session.send(session.frame_reply())
            elif msg.type == WSMsgType.TEXT:
                frame = parse(msg.data)
                config = frame.get("config")
                if isinstance(config, dict) and session.last_seq == 0:
                    with contextlib.suppress(ClientError, TypeError, ValueError, RedisError):
                        # vosk ignores what it can't use, and takes a rate as a float.
                        if "sample_rate" in config:
                            rate = round(float(config["sample_rate"]))
                            await gateway.set_format(session, {"sample_rate": rate})
                elif frame.get("eof"):
                    await _eof(gateway, session)
                    break
                elif frame.get("reset"):
                    # The utterance so far ends here and is answered; the stream goes on.
                    with contextlib.suppress(ClientError, RedisError):
                        await gateway.finalized(session)
                    session.send(session.final_reply())
            else:
                break
    finally:
        await gateway.end(session)
    return ws


async def _eof(gateway: Gateway, session: VoskSession) -> None:
    # Answered with what came, whether or not the flush finished or Redis answered.
    with contextlib.suppress(ClientError, RedisError):
        await gateway.close_flushed(session)
    session.send(session.final_reply())
    session.close_reason = "closed_by_client"
