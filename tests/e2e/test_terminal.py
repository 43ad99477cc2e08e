"""`hark up` in a terminal: the banner, then one status line redrawn in place."""

from __future__ import annotations

import asyncio
import os
import pty
import signal
from pathlib import Path

import pytest

from services.supervisor.cli import status_line
from services.supervisor.tree import free_port
from tests.conftest import TreeFactory
from tests.tree import hark_command

pytestmark = pytest.mark.timeout(60)
REDRAW = b"\r\x1b[K"


async def test_hark_up_keeps_a_live_status_line_in_a_terminal(
    redis_url: str, tmp_path: Path
) -> None:
    master, slave = pty.openpty()
    env = {**os.environ, "HARK_ENGINE": "mock", "HARK_HEARTBEAT_INTERVAL": "0.5"}
    argv = [*hark_command(), "up", "--redis-url", redis_url, "--port", str(free_port()),
            "--status-port", str(free_port()), "--transcribers", "1"]  # fmt: skip
    with (tmp_path / "hark.log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=slave, stderr=log, env=env)
    os.close(slave)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(master, "rb", buffering=0)
    )
    seen = b""
    try:
        while seen.count(REDRAW) < 3:  # drawn, then redrawn twice: it is live
            seen += await asyncio.wait_for(reader.read(4096), 30)
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        transport.close()
    text = seen.decode()
    assert "hark is up" in text and "web page   http://127.0.0.1:" in text
    assert "access     OPEN: no API keys" in text
    assert "the gateway is open to anyone on this machine" in (tmp_path / "hark.log").read_text()
    last = text.split("\r\x1b[K")[-2]
    assert last.startswith("tree OK  transcribers 1/1  sessions 0  mailbox 0  restarts 0  up ")


def test_the_status_line_names_what_is_wrong() -> None:
    report = {"state": "DEGRADED", "redis": False, "uptime_s": 75.0, "actors": [
        {"name": "transcriber-0", "role": "transcriber", "state": "RUNNING", "restarts": 0,
         "mailbox": 4},
        {"name": "transcriber-1", "role": "transcriber", "state": "BACKOFF", "restarts": 2,
         "mailbox": 3},
        {"name": "gateway", "role": "gateway", "state": "RUNNING", "restarts": 0, "sessions": 5},
    ]}  # fmt: skip
    assert status_line(report) == (
        "tree DEGRADED  redis DOWN  transcribers 1/2  sessions 5  mailbox 7  restarts 2  "
        "up 1m15s  transcriber-1 BACKOFF"
    )


async def test_the_banner_gives_the_dashboard_and_the_log_holds_no_redis_chatter(
    start_tree: TreeFactory,
) -> None:
    tree = await start_tree()  # the embedded Redis
    assert f"  dashboard  http://127.0.0.1:{tree.status_port}/" in tree.banner
    log = tree.log_path.read_text()
    # Its start-up lines (an overcommit WARNING among them) went to its own file.
    assert "Redis is starting" not in log and "overcommit" not in log
