"""The gateway's aiohttp application: `create_app(settings, redis)`."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway import deepgram, files
from services.gateway.gateway import Gateway
from services.gateway.openapi import OPENAPI
from services.gateway.vosk_server import handle_vosk
from shared import fds, openapi
from shared.auth import TOKEN_PROTOCOL, bearer, require_admin, unauthorized
from shared.config import Settings
from shared.http_errors import json_error

STATIC = Path(__file__).parent / "static"
GATEWAY = web.AppKey("gateway", Gateway)


def create_app(settings: Settings, redis: Redis, name: str = "gateway") -> web.Application:
    """The gateway app; its startup/cleanup hooks start and stop the Gateway."""
    app = web.Application()
    gateway = Gateway(settings, redis, name)
    app[GATEWAY] = gateway

    async def on_startup(_: web.Application) -> None:
        await gateway.start()

    async def on_shutdown(_: web.Application) -> None:
        await gateway.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/", index)
    app.router.add_get("/ws", ws_route)
    app.router.add_get("/vosk", vosk_route)
    app.router.add_get("/original", original_route)
    app.router.add_post("/v1/audio/transcriptions", transcriptions_route)
    app.router.add_get("/v1/listen", listen_route)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/config", config)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/stats", stats)
    app.router.add_post("/token", token)
    app.router.add_get("/sessions", sessions)
    app.router.add_get("/sessions/{session_id}", session)
    app.router.add_delete("/sessions/{session_id}", end_session)
    app.router.add_routes([openapi.serve(OPENAPI)])
    app.router.add_static("/static/", STATIC)
    return app


async def ws_route(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle_ws(request)


async def original_route(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle_original(request)


async def transcriptions_route(request: web.Request) -> web.StreamResponse:
    return await files.handle(request.app[GATEWAY], request)


async def listen_route(request: web.Request) -> web.StreamResponse:
    return await deepgram.handle_listen(request.app[GATEWAY], request)


async def vosk_route(request: web.Request) -> web.StreamResponse:
    return await handle_vosk(request.app[GATEWAY], request)


def create_vosk_app(gateway: Gateway) -> web.Application:
    """Every path speaks vosk, as vosk-server does on its port (clients often use none)."""
    app = web.Application()
    app[GATEWAY] = gateway
    app.router.add_get("/{tail:.*}", vosk_route)
    return app


async def index(request: web.Request) -> web.StreamResponse:
    """The web page; the original service's JSON status for `Accept: application/json`."""
    if "application/json" in request.headers.get("Accept", ""):
        gateway = request.app[GATEWAY]
        return web.json_response(
            {"message": "WebSocket Service is running", "service": "hark", **gateway.stats()}
        )
    return web.FileResponse(STATIC / "index.html")


async def health(request: web.Request) -> web.Response:
    """Liveness: the gateway's loop answers."""
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    """Readiness: Redis answers and at least one transcriber is live."""
    gateway = request.app[GATEWAY]
    try:
        await gateway.redis.ping()
        redis_ok = True
    except RedisError:
        redis_ok = False
    live = sorted(gateway.router.live)
    pressed = gateway.fds.pressed()
    ok = redis_ok and bool(live) and gateway.accepting and not pressed
    body = {"status": "ready" if ok else "not_ready", "redis": redis_ok, "transcribers": live,
            "file_descriptors": {"open": gateway.fds.open(), "limit": fds.limits()[0]}}  # fmt: skip
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def stats(request: web.Request) -> web.Response:
    """Sessions open, totals since start, the transcribers this gateway routes to."""
    return web.json_response(request.app[GATEWAY].stats())


async def token(request: web.Request) -> web.Response:
    """A short-lived token for a browser, for `Authorization: Bearer <API key>`.

    Optional JSON body {"subject": "..."}: who the token is for (audit entries name
    it); by default a random id. The token is good for HARK_TOKEN_TTL seconds, as
    `?token=` or as the subprotocol `hark-token.<token>`.
    """
    gateway = request.app[GATEWAY]
    if gateway.keys is None:
        raise json_error(web.HTTPNotFound, "no_keys",
                         "no API keys are set: this gateway needs no token")  # fmt: skip
    given = bearer(request)
    principal = None if given is None else gateway.keys.check_key(given.strip())
    if principal is None:
        raise unauthorized()
    subject: Any = None
    if request.can_read_body:
        try:
            subject = (await request.json()).get("subject")
        except (ValueError, AttributeError):
            raise json_error(web.HTTPBadRequest, "bad_request",
                             'the body must be JSON: {"subject": "..."}') from None  # fmt: skip
    if subject is None:
        subject = secrets.token_hex(16)
    if not isinstance(subject, str) or not 0 < len(subject) <= 128 or not subject.isprintable():
        raise json_error(web.HTTPBadRequest, "bad_request",
                         "subject must be a string of 1 to 128 printable characters")  # fmt: skip
    issued = gateway.keys.issue(principal, subject)
    return web.json_response({
        "token": issued, "protocol": TOKEN_PROTOCOL + issued, "subject": subject,
        "expires_in": gateway.keys.token_ttl,
    })  # fmt: skip


async def sessions(request: web.Request) -> web.Response:
    """The sessions open on this gateway, oldest first (admin)."""
    require_admin(request, request.app[GATEWAY].settings.admin_token)
    found = [s.describe() for s in request.app[GATEWAY].sessions.values()]
    return web.json_response({"sessions": sorted(found, key=lambda s: s["opened_at"])})


def _no_session(session_id: str) -> web.HTTPError:
    return json_error(web.HTTPNotFound, "unknown_session",
                      f"no open session {session_id!r} on this gateway")  # fmt: skip


async def session(request: web.Request) -> web.Response:
    """One session (admin)."""
    require_admin(request, request.app[GATEWAY].settings.admin_token)
    session_id = request.match_info["session_id"]
    found = request.app[GATEWAY].sessions.get(session_id)
    if found is None:
        raise _no_session(session_id)
    return web.json_response(found.describe())


async def end_session(request: web.Request) -> web.Response:
    """End a session (admin): its audio is flushed, the client gets the summary and a
    normal close. Answers with that summary."""
    gateway = request.app[GATEWAY]
    require_admin(request, gateway.settings.admin_token)
    session_id = request.match_info["session_id"]
    summary = await gateway.end_session(session_id)
    if summary is None:
        raise _no_session(session_id)
    return web.json_response(summary)


async def config(request: web.Request) -> web.Response:
    """The effective settings, secrets redacted."""
    return web.json_response(request.app[GATEWAY].settings.public())
