"""The supervisor's HTTP API.

Reading: `/` the dashboard page, `/status` (JSON), `/health` (200 only when healthy),
`/audit`, `/metrics`, `/openapi.json` (services/supervisor/openapi.py).
Changing (admin, see shared/auth.py): `POST /actors/{name}/restart`,
`POST /actors/{name}/drain` (`DELETE` ends the drain), `POST /scale`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

from services.supervisor.metrics import render as render_metrics
from services.supervisor.openapi import OPENAPI
from services.supervisor.supervisor import OperationError, Supervisor, UnknownActor
from shared import keys, openapi
from shared.auth import require_admin
from shared.http_errors import json_error
from shared.redis_util import MAX_BLOCK_S, Entry, stream_entries

SUPERVISOR = web.AppKey("supervisor", Supervisor)
STATIC = Path(__file__).parent / "static"
PAGE = 1000
MAX_COUNT = 10_000
MAX_BLOCK_MS = int(MAX_BLOCK_S * 1000)


def create_status_app(supervisor: Supervisor) -> web.Application:
    app = web.Application()
    app[SUPERVISOR] = supervisor
    app.router.add_get("/", dashboard)
    app.router.add_static("/static/", STATIC)
    app.router.add_get("/status", status)
    app.router.add_get("/health", health)
    app.router.add_get("/audit", audit)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/actors/{name}/restart", restart)
    app.router.add_post("/actors/{name}/drain", drain)
    app.router.add_delete("/actors/{name}/drain", drain)
    app.router.add_post("/scale", scale)
    app.router.add_routes([openapi.serve(OPENAPI)])
    return app


async def dashboard(request: web.Request) -> web.FileResponse:
    """The live view of the tree, with restart and drain buttons."""
    return web.FileResponse(STATIC / "index.html")


def _admin(request: web.Request) -> Supervisor:
    supervisor = request.app[SUPERVISOR]
    require_admin(request, supervisor.settings.admin_token)
    return supervisor


async def _operate(operation: Awaitable[Any]) -> Any:
    """Await an operation; its errors as JSON (404 unknown actor, 409 refused)."""
    try:
        return await operation
    except UnknownActor as exc:
        raise json_error(
            web.HTTPNotFound, "unknown_actor", f"no actor named {exc.args[0]!r}"
        ) from None
    except OperationError as exc:
        raise json_error(web.HTTPConflict, "refused", str(exc)) from None
    except RedisError as exc:
        raise json_error(web.HTTPServiceUnavailable, "redis_unavailable", str(exc)) from None


async def restart(request: web.Request) -> web.Response:
    """Restart an actor gracefully; answers once the new incarnation is up."""
    supervisor = _admin(request)
    name = request.match_info["name"]
    await _operate(supervisor.restart(name))
    return web.json_response(supervisor.children[name].row())


async def drain(request: web.Request) -> web.Response:
    supervisor = _admin(request)
    name = request.match_info["name"]
    await _operate(supervisor.drain(name, request.method == "POST"))
    return web.json_response(supervisor.children[name].row())


async def scale(request: web.Request) -> web.Response:
    """`{"transcriber": N}`: run N transcribers; answers once they run."""
    supervisor = _admin(request)
    try:
        body = await request.json()
        ((role, count),) = body.items()
        if not isinstance(count, int) or isinstance(count, bool):
            raise ValueError
    except (ValueError, AttributeError):
        raise json_error(web.HTTPBadRequest, "bad_request",
                    'the body is one role and a count: {"transcriber": 3}') from None  # fmt: skip
    names = await _operate(supervisor.scale(role, count))
    return web.json_response({role: len(names), "actors": names})


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
    # Admin: the log names every session (though never a transcript or a secret).
    require_admin(request, supervisor.settings.admin_token)
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
