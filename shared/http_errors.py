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
