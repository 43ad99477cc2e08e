"""The OpenAPI documents at /openapi.json: valid, in step with the routes, and true to
the live responses (openapi-core validates each one against the document)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from redis.asyncio import Redis

from services.gateway.app import create_app
from services.gateway.openapi import OPENAPI as gateway_doc
from services.supervisor.api import create_status_app
from services.supervisor.backends.process import ProcessBackend
from services.supervisor.openapi import OPENAPI as supervisor_doc
from services.supervisor.supervisor import Supervisor
from shared.config import Settings
from tests.conftest import TreeFactory
from tests.speech import silent_wav
from tests.tree import Tree

pytestmark = pytest.mark.timeout(120)

TOKEN = "openapi-test-token-012345"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
API_KEY = "openapi-test-api-key-6789"
CLIENT = {"Authorization": f"Bearer {API_KEY}"}
ORIGIN = "https://app.example"
# Documented, not exercised here: a WebSocket upgrade is not a JSON response, loopback
# clients are never refused (403), and these 503s need Redis or the tree broken, or
# overloaded (tests/integration/test_overload.py).
NOT_EXERCISED = {
    ("/ws", "get", "101"), ("/vosk", "get", "101"), ("/vosk", "get", "400"),
    ("/ws", "get", "503"), ("/vosk", "get", "503"),
    ("/original", "get", "101"), ("/original", "get", "503"), ("/original", "get", "429"),
    ("/sessions/{session_id}", "delete", "403"), ("/ready", "get", "503"),
    ("/actors/{name}/restart", "post", "403"), ("/actors/{name}/drain", "post", "403"),
    ("/actors/{name}/drain", "delete", "403"), ("/scale", "post", "403"),
    ("/health", "get", "503"), ("/audit", "get", "503"),
    ("/sessions", "get", "403"), ("/sessions/{session_id}", "get", "403"),
    ("/audit", "get", "403"),
    ("/ws", "get", "429"), ("/vosk", "get", "429"),  # tests/security/test_limits.py
    ("/token", "post", "404"),  # a gateway without keys: tests/security/test_auth.py
    ("/v1/audio/transcriptions", "post", "429"), ("/v1/audio/transcriptions", "post", "503"),
    ("/v1/listen", "get", "101"), ("/v1/listen", "get", "429"), ("/v1/listen", "get", "503"),
    ("/actors/{name}/drain", "delete", "404"), ("/actors/{name}/drain", "delete", "409"),
    ("/actors/{name}/restart", "post", "409"),
}  # fmt: skip


class Checker:
    """Calls a live server and validates each response against its document."""

    def __init__(self, http: aiohttp.ClientSession, base: str, doc: dict[str, Any]) -> None:
        self.http = http
        self.base = base
        self.doc = doc
        self.spec = OpenAPI.from_dict(doc)  # also validates the document itself
        self.seen: set[tuple[str, str, str]] = set()

    async def call(
        self, method: str, path: str, pattern: str, status: int, **kwargs: Any
    ) -> aiohttp.ClientResponse:
        async with self.http.request(method, self.base + path, **kwargs) as resp:
            body = await resp.read()
            assert resp.status == status, (method, path, resp.status, body[:300])
            request = MockRequest(self.base, method.lower(), path, path_pattern=pattern)
            response = MockResponse(body, status_code=resp.status,
                                    content_type=resp.content_type)  # fmt: skip
            self.spec.validate_response(request, response)
            self.seen.add((pattern, method.lower(), str(status)))
            return resp

    def unexercised(self) -> set[tuple[str, str, str]]:
        documented = {
            (path, method, status)
            for path, item in self.doc["paths"].items()
            for method, op in item.items() if method != "parameters"
            for status in op["responses"]
        }  # fmt: skip
        return documented - self.seen - NOT_EXERCISED


def _routes(app: Any) -> set[tuple[str, str]]:
    found = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method != "HEAD" and not path.startswith("/static"):
            found.add((path, route.method.lower()))
    return found


def _documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in doc["paths"].items()
            for method in item if method != "parameters"}  # fmt: skip


async def test_each_document_names_exactly_the_routes_its_app_serves(redis_url: str) -> None:
    settings = Settings(redis_url=redis_url)
    redis = Redis.from_url(redis_url)
    try:
        gateway = create_app(settings, redis)
        supervisor = create_status_app(Supervisor(settings, ProcessBackend(), [], redis_url))
        assert _routes(gateway) == _documented(gateway_doc)
        assert _routes(supervisor) == _documented(supervisor_doc)
    finally:
        await redis.aclose()


async def _gateway_calls(tree: Tree, http: aiohttp.ClientSession) -> Checker:
    base = f"http://127.0.0.1:{tree.port}"
    async with http.get(base + "/openapi.json") as resp:
        check = Checker(http, base, await resp.json())
    await check.call("GET", "/openapi.json", "/openapi.json", 200)
    await check.call("GET", "/", "/", 200)
    await check.call("GET", "/", "/", 200, headers={"Accept": "application/json"})
    for path in ("/health", "/ready", "/config", "/metrics", "/stats"):
        await check.call("GET", path, path, 200)
    for path in ("/ws", "/vosk", "/original"):
        await check.call("GET", path, path, 401)  # no key
        await check.call("GET", path, path, 403, headers={**CLIENT, "Origin": "https://x.example"})
    await check.call("GET", "/ws", "/ws", 400, headers=CLIENT)  # not an upgrade
    listen = "/v1/listen"
    dg_key = {"Authorization": f"Token {API_KEY}"}
    await check.call("GET", listen, listen, 401)
    await check.call("GET", listen, listen, 403, headers={**dg_key, "Origin": "https://x.example"})
    await check.call("GET", listen + "?encoding=speex", listen, 400, headers=dg_key)
    await check.call("GET", listen, listen, 400, headers=dg_key)  # not an upgrade
    files = "/v1/audio/transcriptions"
    for answer, status, headers in (
        (None, 401, {}),
        (None, 403, {**CLIENT, "Origin": "https://x.example"}),
        (b"not audio", 400, CLIENT),
        (b"\0" * 200_000, 413, CLIENT),
        (silent_wav(), 200, CLIENT),
    ):
        form = aiohttp.FormData({"model": "whisper-1"})
        form.add_field("file", answer or silent_wav(), filename="a.wav")
        await check.call("POST", files, files, status, headers=headers, data=form)
    form = aiohttp.FormData({"model": "whisper-1", "response_format": "text"})
    form.add_field("file", silent_wav(), filename="a.wav")
    await check.call("POST", files, files, 200, headers=CLIENT, data=form)
    await check.call("GET", "/original", "/original", 400, headers=CLIENT)
    await check.call("POST", "/token", "/token", 401)
    await check.call("POST", "/token", "/token", 400, headers=CLIENT, data=b"[1]")
    await check.call("POST", "/token", "/token", 200, headers=CLIENT, json={"subject": "me"})
    async with http.ws_connect(base.replace("http", "ws") + "/ws", headers=CLIENT) as ws:
        sid = (await ws.receive_json(timeout=10))["session_id"]
        await ws.send_bytes(b"\x00" * 320)
        one = "/sessions/{session_id}"
        await check.call("GET", "/sessions", "/sessions", 401)
        await check.call("GET", "/sessions", "/sessions", 200, headers=ADMIN)
        await check.call("GET", f"/sessions/{sid}", one, 401)
        await check.call("GET", f"/sessions/{sid}", one, 200, headers=ADMIN)
        await check.call("GET", "/sessions/nope", one, 404, headers=ADMIN)
        await check.call("DELETE", "/sessions/nope", one, 404, headers=ADMIN)
        await check.call("DELETE", f"/sessions/{sid}", one, 401)
        await check.call("DELETE", f"/sessions/{sid}", one, 200, headers=ADMIN)
    return check


async def _supervisor_calls(tree: Tree, http: aiohttp.ClientSession) -> Checker:
    base = tree.status_url
    async with http.get(base + "/openapi.json") as resp:
        check = Checker(http, base, await resp.json())
    await check.call("GET", "/openapi.json", "/openapi.json", 200)
    for path in ("/", "/status", "/health", "/metrics"):
        await check.call("GET", path, path, 200)
    await check.call("GET", "/audit?count=5", "/audit", 401)
    await check.call("GET", "/audit?count=5", "/audit", 200, headers=ADMIN)
    await check.call("GET", "/audit?count=many", "/audit", 400, headers=ADMIN)
    drain, restart = "/actors/{name}/drain", "/actors/{name}/restart"
    await check.call("POST", "/actors/transcriber-0/drain", drain, 401)
    await check.call("POST", "/actors/transcriber-0/drain", drain, 200, headers=ADMIN)
    await check.call("DELETE", "/actors/transcriber-0/drain", drain, 200, headers=ADMIN)
    await check.call("DELETE", "/actors/transcriber-0/drain", drain, 401)
    await check.call("POST", "/actors/nobody/drain", drain, 404, headers=ADMIN)
    await check.call("POST", "/actors/gateway/drain", drain, 409, headers=ADMIN)
    await check.call("POST", "/actors/nobody/restart", restart, 404, headers=ADMIN)
    await check.call("POST", "/actors/transcriber-1/restart", restart, 401)
    await check.call("POST", "/actors/transcriber-1/restart", restart, 200, headers=ADMIN)
    await check.call("POST", "/scale", "/scale", 401, json={"transcriber": 3})
    await check.call("POST", "/scale", "/scale", 400, json=["x"], headers=ADMIN)
    await check.call("POST", "/scale", "/scale", 409, json={"gateway": 2}, headers=ADMIN)
    await check.call("POST", "/scale", "/scale", 200, json={"transcriber": 3}, headers=ADMIN)
    return check


async def test_every_documented_answer_is_what_the_live_servers_send(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, env={
        "HARK_ADMIN_TOKEN": TOKEN, "HARK_API_KEYS": f"test:{API_KEY}",
        "HARK_ALLOWED_ORIGINS": ORIGIN, "HARK_MAX_FILE_BYTES": "100000",
    })  # fmt: skip
    async with aiohttp.ClientSession() as http:
        gateway = await _gateway_calls(tree, http)
        supervisor = await _supervisor_calls(tree, http)
    assert gateway.unexercised() == set()
    assert supervisor.unexercised() == set()
