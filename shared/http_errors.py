"""HTTP errors with hark's JSON error body, for every server's endpoints."""

from __future__ import annotations

import json
from collections.abc import Mapping

from aiohttp import web


def json_error(
    cls: type[web.HTTPError], code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.HTTPError:
    """`cls` (e.g. web.HTTPNotFound) carrying `{"status": "error", "code": ..., "error": ...}`,
    the shape the WebSocket protocol's errors have too."""
    body = json.dumps({"status": "error", "code": code, "error": message})
    return cls(text=body, content_type="application/json", headers=headers)


def described(exc: web.HTTPException) -> tuple[str, str, dict[str, str]]:
    """An HTTP error's hark code, its message and the headers a client acts on
    (Retry-After, WWW-Authenticate), for an endpoint that answers in another API's
    shape (OpenAI's, Deepgram's). An error not made by json_error: its reason."""
    try:
        body = json.loads(exc.text or "{}")
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or exc.reason.lower().replace(" ", "_"))
    headers = {k: v for k, v in exc.headers.items() if k in ("Retry-After", "WWW-Authenticate")}
    return code, str(body.get("error") or exc.reason), headers
