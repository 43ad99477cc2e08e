"""Who may use the endpoints that change something (restart, drain, scale, end a session).

With HARK_ADMIN_TOKEN set, a request must carry it as `Authorization: Bearer <token>`.
Without one, only clients on loopback may: the default deployment binds every
port to 127.0.0.1, and a deployment that publishes its ports sets a token.
"""

from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from shared.http_errors import json_error


def require_admin(request: web.Request, token: str | None) -> None:
    """Return if the request may change things; raise 401 or 403 (JSON) if not."""
    if token is None:
        if not _loopback(request.remote):
            raise json_error(web.HTTPForbidden, "forbidden",
                             "set HARK_ADMIN_TOKEN to allow this from other hosts")  # fmt: skip
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise json_error(web.HTTPUnauthorized, "unauthorized",
                         "this endpoint needs Authorization: Bearer <HARK_ADMIN_TOKEN>",
                         headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


def _loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False  # a unix socket peer has no address; a token is needed there
