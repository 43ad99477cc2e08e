"""A whisper transcriber SIGKILLed in the middle of an utterance: its replacement rebuilds
the utterance from the audio still pending in its mailbox, and no word is lost."""

from __future__ import annotations

import os
import signal
import wave
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import wer
from tests.conftest import TreeFactory
from tests.tree import count, replies_until

pytestmark = pytest.mark.timeout(180)

SPEECH = Path(__file__).parent.parent / "data" / "two_sentences.wav"
SENTENCES = ("the juice of lemons makes fine punch", "the boy was there when the sun rose")


async def test_killed_mid_utterance_the_replacement_rebuilds_it_from_pending_audio(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=1, env={"HARK_ENGINE": "whisper"})
    with wave.open(str(SPEECH)) as w:
        rate, audio = w.getframerate(), w.readframes(w.getnframes())
    chunks = [audio[i : i + rate // 10 * 2] for i in range(0, len(audio), rate // 10 * 2)]
    replies: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        await ws.receive_json(timeout=30)
        for chunk in chunks[:15]:  # 1.5 s: in the middle of the first sentence
            await ws.send_bytes(chunk)
        replies += await replies_until(ws, lambda r: count(r, "received") == 15)
        victim = await tree.actor("transcriber-0")
        os.kill(victim["pid"], signal.SIGKILL)
        for chunk in chunks[15:]:
            await ws.send_bytes(chunk)
        await ws.send_str('{"type": "close"}')
        async for msg in ws:
            replies.append(msg.json())
    finals = [r["text"] for r in replies if r["status"] == "transcript" and r["final"]]
    assert len(finals) == 2, finals
    for reference, text in zip(SENTENCES, finals, strict=True):
        assert wer.errors(reference, text) <= 1, text
    restarted = await tree.actor("transcriber-0")
    assert restarted["pid"] != victim["pid"] and restarted["restarts"] == 1
    starts = [e for e in await tree.audit() if e["event"] == "actor_start" and "recovered" in e]
    assert int(starts[-1]["recovered"]) > 0, "the replacement replayed nothing"
    print(f"replayed {starts[-1]['recovered']} entries; finals: {finals}")
