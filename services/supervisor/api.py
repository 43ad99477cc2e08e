"""The supervisor's HTTP API: `/status` (JSON) and `/health` (200 only when healthy)."""

from __future__ import annotations

from aiohttp import web

from services.supervisor.supervisor import Supervisor

SUPERVISOR = web.AppKey("supervisor", Supervisor)


def create_status_app(supervisor: Supervisor) -> web.Application:
    app = web.Application()
    app[SUPERVISOR] = supervisor
    app.router.add_get("/status", status)
    app.router.add_get("/health", health)
    return app


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[SUPERVISOR].status())


async def health(request: web.Request) -> web.Response:
    report = request.app[SUPERVISOR].status()
    body = {"status": report["state"], "healthy": report["healthy"]}
    return web.json_response(body, status=200 if report["healthy"] else 503)
