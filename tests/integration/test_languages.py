"""A language code no transcriber's engine knows is refused when the session opens (its
transcribers' heartbeats say which they know), on every door: the WebSocket's query and
`start`, Deepgram's `/v1/listen`, OpenAI's file endpoint. Codes they know, and any code
where an engine takes any (the mock), go through."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from services.transcriber.engines.mock import MockEngine
from shared.config import Settings
from tests.integration.gateway_fixtures import _running, gateway_of, open_session, receive
from tests.speech import silent_wav

pytestmark = pytest.mark.timeout(30)


class TwoLanguages(MockEngine):
    """The mock, knowing two languages and detection, as a whisper model says it does."""

    languages = ("de", "en", "auto")


@pytest.fixture
async def knows_two(settings: Settings) -> AsyncIterator[None]:
    async with _running(settings, TwoLanguages()):
        yield


async def test_a_code_no_engine_knows_is_refused_at_the_handshake_with_those_it_knows(
    knows_two: None, gateway: TestClient[Any, Any]
) -> None:
    ws, reply = await open_session(gateway, "?language=xx")
    assert (reply["status"], reply["code"]) == ("error", "bad_setting"), reply
    assert "'xx'" in reply["error"] and "de, en, auto" in reply["error"], reply
    await ws.close()
    for code in ("de", "auto"):
        ws, reply = await open_session(gateway, f"?language={code}")
        assert reply["status"] == "ready", reply
        await ws.close()


async def test_a_start_with_a_code_no_engine_knows_is_refused_and_the_session_goes_on(
    knows_two: None, gateway: TestClient[Any, Any]
) -> None:
    ws, hello = await open_session(gateway, "?language=de")
    assert hello["status"] == "ready"
    await ws.send_json({"type": "start", "language": "xx"})
    reply = await receive(ws)
    assert (reply["status"], reply["code"]) == ("error", "bad_setting"), reply
    stored = gateway_of(gateway).sessions[hello["session_id"]].fmt
    assert stored.language == "de"  # the setting it had stands
    await ws.send_bytes(b"\x00" * 320)
    assert (await receive(ws))["status"] == "received"
    await ws.close()


async def test_deepgram_and_openai_clients_get_their_400_for_a_code_no_engine_knows(
    knows_two: None, gateway: TestClient[Any, Any]
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refusal:
        await gateway.ws_connect("/v1/listen?language=xx&encoding=linear16&sample_rate=16000")
    assert refusal.value.status == 400
    form = aiohttp.FormData()
    form.add_field("file", silent_wav(), filename="a.wav", content_type="audio/wav")
    form.add_field("model", "whisper-1")
    form.add_field("language", "xx")
    resp = await gateway.post("/v1/audio/transcriptions", data=form)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["param"] == "language", body


async def test_an_engine_that_takes_any_code_is_given_any(
    transcriber: None, gateway: TestClient[Any, Any]
) -> None:
    ws, reply = await open_session(gateway, "?language=xx")
    assert reply["status"] == "ready", reply
    await ws.close()
