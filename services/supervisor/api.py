"""The supervisor's HTTP API: `/status` (JSON), `/health` (200 only when healthy), `/audit`."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from services.supervisor.metrics import render as render_metrics
from services.supervisor.supervisor import Supervisor
from shared import keys
from shared.redis_util import MAX_BLOCK_S, Entry, stream_entries

SUPERVISOR = web.AppKey("supervisor", Supervisor)
PAGE = 1000
MAX_COUNT = 10_000
MAX_BLOCK_MS = int(MAX_BLOCK_S * 1000)


def create_status_app(supervisor: Supervisor) -> web.Application:
    app = web.Application()
    app[SUPERVISOR] = supervisor
    app.router.add_get("/status", status)
    app.router.add_get("/health", health)
    app.router.add_get("/audit", audit)
    app.router.add_get("/metrics", metrics)
    return app


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SUPERVISOR].status())


async def health(request: web.Request) -> web.Response:
    report = request.app[SUPERVISOR].status()
    body = {"status": report["state"], "healthy": report["healthy"]}
    return web.json_response(body, status=200 if report["healthy"] else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    body = await render_metrics(request.app[SUPERVISOR])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def audit(request: web.Request) -> web.Response:
    """Audit entries, oldest first.

    `count` (default 100): how many; `session`: only that session's; `after`: only
    entries after this id, waiting up to `block_ms` for the first (for --follow).
    """
    supervisor = request.app[SUPERVISOR]
    if supervisor.redis is None:
        raise web.HTTPServiceUnavailable(reason="Redis not connected")
    try:
        count = min(int(request.query.get("count", "100")), MAX_COUNT)
        block_ms = min(int(request.query.get("block_ms", "0")), MAX_BLOCK_MS)
    except ValueError:
        raise web.HTTPBadRequest(reason="count and block_ms are integers") from None
    session = request.query.get("session")
    after = request.query.get("after")

    def wanted(entry: Entry) -> bool:
        return session is None or entry[1].get(b"session") == session.encode()

    redis = supervisor.redis
    try:
        if after is not None:
            reply: Any = await redis.xread({keys.AUDIT: after}, count=PAGE, block=block_ms or None)
            found = [e for _, entries in reply or [] for e in stream_entries(entries)]
            last = found[-1][0].decode() if found else after
            picked = [e for e in found if wanted(e)][:count]
        else:
            picked, end = [], "+"
            while len(picked) < count:  # newest first, page by page, until enough match
                page = stream_entries(await redis.xrevrange(keys.AUDIT, max=end, count=PAGE))
                picked += [e for e in page if wanted(e)]
                if len(page) < PAGE:
                    break
                end = "(" + page[-1][0].decode()
            picked = picked[:count][::-1]
            newest = stream_entries(await redis.xrevrange(keys.AUDIT, count=1))
            last = newest[0][0].decode() if newest else "0"
    except RedisError as exc:
        raise web.HTTPServiceUnavailable(reason=f"Redis: {exc}") from None
    return web.json_response({"entries": [_entry(e) for e in picked], "last_id": last})


def _entry(entry: Entry) -> dict[str, Any]:
    entry_id, fields = entry
    return {"id": entry_id.decode(), **{k.decode(): v.decode() for k, v in fields.items()}}
