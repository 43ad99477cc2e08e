"""/metrics on the gateway and the supervisor, scraped after a known workload."""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TreeFactory
from tests.tree import count, replies_until

pytestmark = pytest.mark.timeout(60)


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample, keyed by (name, sorted labels)."""
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_count_a_known_workload(start_tree: TreeFactory, redis_url: str) -> None:
    tree = await start_tree(redis_url=redis_url)
    sizes = [100, 200, 300, 400, 500]
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        await ws.receive_json(timeout=10)
        await ws.send_bytes(b"")  # one error
        for size in sizes:
            await ws.send_bytes(b"\x00" * size)
        await replies_until(ws, lambda r: count(r, "transcript") == len(sizes))
        gateway = await scrape(f"http://127.0.0.1:{tree.port}/metrics")
    assert gateway[("hark_chunks_total", ())] == 5
    assert gateway[("hark_audio_bytes_total", ())] == sum(sizes)
    assert gateway[("hark_results_total", (("kind", "final"),))] == 5
    assert gateway[("hark_errors_total", (("code", "empty_frame"),))] == 1
    assert gateway[("hark_result_latency_seconds_count", ())] == 5
    assert gateway[("hark_sessions_open", ())] == 1

    victim = await tree.actor("transcriber-1")
    os.kill(victim["pid"], signal.SIGKILL)
    await tree.wait_audit(lambda e: e["event"] == "actor_ready" and e["child"] == "transcriber-1")
    supervisor = await scrape(f"{tree.status_url}/metrics")
    assert supervisor[("hark_actor_restarts", (("actor", "transcriber-1"),))] == 1
    assert supervisor[("hark_actor_restarts", (("actor", "transcriber-0"),))] == 0
    assert all(supervisor[("hark_actor_up", (("actor", name),))] == 1
               for name in ("transcriber-0", "transcriber-1", "gateway"))  # fmt: skip
    assert supervisor[("hark_actor_last_restart_milliseconds", (("actor", "transcriber-1"),))] > 0
    assert supervisor[("hark_mailbox_entries", (("actor", "transcriber-0"),))] == 0
    assert supervisor[("hark_audit_entries", ())] > 10
    assert supervisor[("hark_tree_healthy", ())] == 1
