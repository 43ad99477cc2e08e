"""The original service's clients, unchanged but for the URL: a client written from its
README (../shared/seeds/readme-original-service.md), against `/original`."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.integration.gateway_fixtures import LIMIT

pytestmark = [pytest.mark.timeout(30), pytest.mark.usefixtures("transcriber")]


async def original_client(url: str, frames: list[bytes]) -> list[dict[str, Any]]:
    """What the README's Python example does, for each frame: send it, then read the
    confirmation and the transcript (or the one error)."""
    replies = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for frame in frames:
            await ws.send_bytes(frame)
            first = json.loads(await ws.receive_str(timeout=10))
            replies.append(first)
            if first["status"] == "received":
                replies.append(json.loads(await ws.receive_str(timeout=10)))
    return replies


async def test_the_original_clients_get_the_original_replies(
    gateway: TestClient[Any, Any],
) -> None:
    url = f"ws://127.0.0.1:{gateway.port}/original"
    replies = await original_client(url, [b"test audio data", b"", b"\x00" * (LIMIT + 1),
                                          b"\x00" * 1024])  # fmt: skip
    received, transcript, empty, large, received2, transcript2 = replies
    assert received == {"status": "received", "size": 15}  # exactly, no greeting before
    assert list(transcript) == ["client_id", "text", "status"]
    assert transcript["status"] == "transcript"
    assert (
        transcript["text"].startswith("Transcribed: ") and "(size: 15 bytes)" in transcript["text"]
    )
    assert empty == {"error": "Audio data is empty", "status": "error"}
    assert large == {"error": f"Audio data too large (max {LIMIT} bytes)", "status": "error"}
    assert received2 == {"status": "received", "size": 1024}
    assert "(size: 1024 bytes)" in transcript2["text"]
    assert transcript2["client_id"] == transcript["client_id"]
