"""Who gets in: API keys, browser tokens, the Origin allowlist, the session endpoints.

A gateway app in this process with a real Redis and a mock transcriber
(tests/integration/gateway_fixtures.py), configured with API keys.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from redis.asyncio import Redis

from services.gateway.app import create_app
from services.gateway.client import Client, ResumeFailed
from shared import keys, logs
from shared.audit import format_entry
from shared.auth import ApiKeys, Principal
from shared.config import Settings, SettingsError
from shared.redis_util import stream_entries
from tests.integration.gateway_fixtures import ClientFactory, receive
from tests.security.conftest import ADMIN, KEY, ORIGIN, OTHER, bearer

# The transcriber first: it is live before the gateway starts looking for one.
pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("transcriber")]


async def refused(gateway: TestClient[Any, Any], path: str = "/ws", **kwargs: Any) -> int:
    """The handshake's HTTP status, checking that a 401 says nothing but 'unauthorized'."""
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await gateway.ws_connect(path, **kwargs)
    if caught.value.status == 401 and "protocols" not in kwargs:
        resp = await gateway.get(path, **kwargs)
        assert await resp.json() == {"status": "error", "code": "unauthorized",
                                     "error": "missing or invalid credentials"}  # fmt: skip
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    return caught.value.status


async def token_for(gateway: TestClient[Any, Any], key: str = KEY, **body: Any) -> dict[str, Any]:
    resp = await gateway.post("/token", headers=bearer(key), json=body or None)
    assert resp.status == 200, await resp.text()
    issued: dict[str, Any] = await resp.json()
    return issued


async def test_without_a_valid_key_or_token_the_handshake_gets_401_and_nothing_else(
    gateway: TestClient[Any, Any], settings: Settings
) -> None:
    keyring = ApiKeys.from_settings(settings)
    assert keyring is not None
    expired = keyring.issue(Principal("alpha"), "someone", now=0.0)
    forged = ApiKeys({"alpha": "not-the-real-alpha-key"}, 300).issue(Principal("alpha"), "x")
    payload, mac = (await token_for(gateway))["token"].split(".")
    tampered = payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB") + "." + mac
    for path in ("/ws", "/vosk"):
        assert await refused(gateway, path) == 401
        assert await refused(gateway, path, headers=bearer("wrong-key-0123456789abcdef")) == 401
        assert await refused(gateway, path, headers={"Authorization": f"Basic {KEY}"}) == 401
        for bad in (expired, forged, tampered, "", "garbage", "a.b", "\u00e9.\u00e9"):
            assert await refused(gateway, f"{path}?token={bad}") == 401
        assert await refused(gateway, path, protocols=(f"hark-token.{expired}",)) == 401
    assert (await gateway.post("/token")).status == 401
    assert (await gateway.post("/token", headers=bearer("wrong"))).status == 401
    # A token is no key: it cannot mint tokens.
    fresh = (await token_for(gateway))["token"]
    assert (await gateway.post("/token", headers=bearer(fresh))).status == 401


async def test_a_key_a_token_in_the_query_and_a_token_as_subprotocol_each_open_a_session(
    gateway: TestClient[Any, Any], redis: Redis
) -> None:
    ws = await gateway.ws_connect("/ws", headers=bearer(OTHER))
    assert (await receive(ws))["status"] == "ready"
    await ws.close()

    issued = await token_for(gateway, subject="user-42")
    assert issued["subject"] == "user-42" and issued["expires_in"] == 300
    ws = await gateway.ws_connect(f"/ws?token={issued['token']}")
    hello = await receive(ws)
    assert hello["status"] == "ready"
    await ws.close()
    opened = [fields for _, fields in stream_entries(await redis.xrange(keys.AUDIT))
              if fields[b"event"] == b"session_open"
              and fields[b"session"] == hello["session_id"].encode()]  # fmt: skip
    assert opened[0][b"key"] == b"alpha" and opened[0][b"subject"] == b"user-42"

    # Browsers: the token as a subprotocol, answered with the same subprotocol.
    ws = await gateway.ws_connect("/ws", protocols=(issued["protocol"],))
    assert ws.protocol == issued["protocol"]
    assert (await receive(ws))["status"] == "ready"
    await ws.send_bytes(b"\x00" * 320)
    assert (await receive(ws))["status"] == "received"
    await ws.close()


async def test_a_browser_from_an_origin_not_allowed_gets_403(gateway: TestClient[Any, Any]) -> None:
    headers = {**bearer(KEY), "Origin": "https://evil.example"}
    assert await refused(gateway, headers=headers) == 403
    ws = await gateway.ws_connect("/ws", headers={**bearer(KEY), "Origin": ORIGIN})
    assert (await receive(ws))["status"] == "ready"
    await ws.close()


async def test_session_listings_need_the_admin_token_and_config_shows_no_secret(
    gateway: TestClient[Any, Any],
) -> None:
    ws = await gateway.ws_connect("/ws", headers=bearer(KEY))
    sid = (await receive(ws))["session_id"]
    for path in ("/sessions", f"/sessions/{sid}"):
        assert (await gateway.get(path)).status == 401
        assert (await gateway.get(path, headers=bearer(KEY))).status == 401  # a client key
        assert (await gateway.get(path, headers=bearer(ADMIN))).status == 200
    await ws.close()
    shown = await (await gateway.get("/config")).text()
    for secret in (KEY, OTHER, ADMIN):
        assert secret not in shown
    assert '"api_keys": "***"' in shown


async def test_an_open_gateway_has_no_tokens_to_give(
    settings: Settings, aiohttp_client: ClientFactory, redis: Redis
) -> None:
    open_settings = dataclasses.replace(settings, api_keys=None)
    client = await aiohttp_client(create_app(open_settings, redis))
    resp = await client.post("/token", headers=bearer(KEY))
    assert resp.status == 404 and (await resp.json())["code"] == "no_keys"
    await client.close()


def test_keys_come_from_the_setting_and_the_file_and_must_be_long(tmp_path: Path) -> None:
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"# one a line\nfile:{OTHER}\n\n{KEY}\n")
    ring = ApiKeys.from_settings(Settings(api_keys="inline:inline-key-0123456789ab",
                                          api_keys_file=str(keyfile)))  # fmt: skip
    assert ring is not None
    assert ring.check_key(OTHER) == Principal("file")
    assert ring.check_key("inline-key-0123456789ab") == Principal("inline")
    unnamed = ring.check_key(KEY)
    assert unnamed is not None and unnamed.key.startswith("key-") and KEY not in unnamed.key
    assert ring.check_key(KEY[:-1]) is None
    assert ApiKeys.from_settings(Settings()) is None
    with pytest.raises(SettingsError, match="fewer than 16"):
        ApiKeys.from_settings(Settings(api_keys="short"))
    with pytest.raises(SettingsError, match="HARK_API_KEYS_FILE"):
        ApiKeys.from_settings(Settings(api_keys_file=str(tmp_path / "missing")))


async def test_the_python_client_streams_with_a_key_and_stops_at_once_without(
    gateway: TestClient[Any, Any],
) -> None:
    url = str(gateway.make_url("/ws")).replace("http", "ws", 1)
    replies: list[dict[str, Any]] = []
    summary = await Client(url, api_key=KEY, retry_for=5).run([b"\x00" * 320], replies.append)
    assert summary["chunks"] == 1 and replies[0]["status"] == "ready"
    with pytest.raises(ResumeFailed, match="HTTP 401"):
        await Client(url, api_key="wrong-key-0123456789abcdef", retry_for=60).run([], print)


async def test_a_subject_that_could_forge_audit_lines_or_drive_a_terminal_is_refused(
    gateway: TestClient[Any, Any],
) -> None:
    forged = "x\n2026-12-03 10:00:00.000 session_open gateway FORGED\x1b[2J\x1b[31mRED"
    for subject in (forged, "tab\there", "bell\x07", "x" * 129, ""):
        resp = await gateway.post("/token", headers=bearer(KEY), json={"subject": subject})
        assert resp.status == 400, subject
        assert "printable" in (await resp.json())["error"]
    resp = await gateway.post("/token", headers=bearer(KEY), json={"subject": "alice é 名"})
    assert resp.status == 200


def test_what_a_client_sent_is_printed_escaped_in_the_audit_and_the_logs() -> None:
    # Entries written before subjects were checked, or any value a client chose.
    fields = {"ts": "1796300000.0", "event": "session_open", "actor": "gateway",
              "session": "s1", "subject": "x\n2026 session_open FORGED\x1b[2J"}  # fmt: skip
    line = format_entry("1-0", fields)
    assert "\n" not in line and "\x1b" not in line
    assert "subject=x\\n2026 session_open FORGED\\x1b[2J" in line
    record = logging.LogRecord("t", logging.INFO, "f", 1, "got %s", ("a\nb\x1b[31m",), None)
    text = logs._PrintableFormatter("%(message)s").format(record)
    assert text == "got a\\nb\\x1b[31m"
