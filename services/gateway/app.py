"""The gateway's aiohttp application: `create_app(settings, redis)`."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.gateway.gateway import Gateway
from shared.config import Settings

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
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/config", config)
    app.router.add_get("/metrics", metrics)
    app.router.add_static("/static/", STATIC)
    return app


async def ws_route(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle_ws(request)


async def vosk_route(request: web.Request) -> web.StreamResponse:
    return await request.app[GATEWAY].handle_vosk(request)


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
    ok = redis_ok and bool(live) and gateway.accepting
    body = {"status": "ready" if ok else "not_ready", "redis": redis_ok, "transcribers": live}
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    body = request.app[GATEWAY].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def config(request: web.Request) -> web.Response:
    """The effective settings, secrets redacted."""
    return web.json_response(request.app[GATEWAY].settings.public())
