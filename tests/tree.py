"""Drive a real `hark up` process tree from a test."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from redis.asyncio import Redis

from services.supervisor.tree import free_port
from shared import keys
from shared.auth import read_admin_token


def hark_command() -> list[str]:
    """The `hark` script installed beside this Python, as a user runs it."""
    script = Path(sys.executable).parent / "hark"
    if script.exists():
        return [str(script)]
    found = shutil.which("hark")
    return [found] if found else [sys.executable, "-m", "services.supervisor"]


class Tree:
    """A `hark up` subprocess on free ports; its log goes to `log_path`."""

    def __init__(
        self,
        log_path: Path,
        *,
        redis_url: str | None = None,
        transcribers: int = 2,
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.status_port = free_port()
        self.redis_url = redis_url
        self.transcribers = transcribers
        # The mock engine unless a test names one: the plumbing tests need no model.
        self.env = {**os.environ, "HARK_HEARTBEAT_INTERVAL": "0.5", "HARK_ENGINE": "mock",
                    **(env or {})}  # fmt: skip
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.banner: list[str] = []
        self.redis: Redis | None = Redis.from_url(redis_url) if redis_url else None
        self._audit_last = b"0"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"

    @property
    def admin_token(self) -> str | None:
        """The tree's admin token: the test's HARK_ADMIN_TOKEN, or the one `hark up` made up."""
        return self.env.get("HARK_ADMIN_TOKEN") or read_admin_token(self.status_url)

    @property
    def admin(self) -> dict[str, str]:
        """Headers that carry the admin token."""
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def start(self) -> None:
        argv = [*hark_command(), "up", "--port", str(self.port),
                "--status-port", str(self.status_port),
                "--transcribers", str(self.transcribers)]  # fmt: skip
        if self.redis_url:
            argv += ["--redis-url", self.redis_url]
        log = self.log_path.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=log, env=self.env
        )
        log.close()
        assert self.proc.stdout is not None
        while True:  # the banner is printed once every child is ready
            line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
            if not line:
                # Reap it here: signalling an exited child from stop() would reap it
                # behind asyncio's back (Popen.send_signal polls) and lose its exit code.
                code = await asyncio.wait_for(self.proc.wait(), 30)
                raise RuntimeError(f"hark up exited early ({code}):\n{self.log_tail()}")
            self.banner.append(line.decode().rstrip())
            if line.startswith(b"Ctrl-C"):
                return

    async def stop(self) -> int:
        """SIGINT, as Ctrl-C in a terminal; the exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.proc.wait(), 30)
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        return code

    def log_tail(self, lines: int = 200) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # -- asking it ----------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as http, http.get(f"{self.status_url}/status") as resp:
            report: dict[str, Any] = await resp.json()
            return report

    async def actor(self, name: str) -> dict[str, Any]:
        report = await self.status()
        return next(a for a in report["actors"] if a["name"] == name)

    async def gateway_stats(
        self, until: Callable[[dict[str, Any]], bool], within: float = 10.0
    ) -> dict[str, Any]:
        """The gateway's /stats once `until(stats)` holds. The gateway learns of
        transcribers from their heartbeats, with no event to wait on from outside:
        this asks again every 50 ms."""

        async def ask() -> dict[str, Any]:
            url = f"http://127.0.0.1:{self.port}/stats"
            async with aiohttp.ClientSession() as http:
                while True:
                    async with http.get(url) as resp:
                        stats: dict[str, Any] = await resp.json()
                    if until(stats):
                        return stats
                    await asyncio.sleep(0.05)

        return await asyncio.wait_for(ask(), within)

    async def cli(self, *args: str) -> tuple[int, str]:
        """Run `hark <args>` against this tree (unless args name a --url); (exit code, output)."""
        url = () if "--url" in args else ("--url", self.status_url)
        proc = await asyncio.create_subprocess_exec(
            *hark_command(), *args, *url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    async def wait_audit(
        self,
        match: Callable[[dict[str, str]], bool],
        within: float = 20.0,
        from_start: bool = False,
    ) -> dict[str, str]:
        """The next audit entry (after the last one returned) that `match`es.

        `from_start`: any entry, from the beginning of the log, without moving the
        cursor; for entries of different writers, whose order in the log is not fixed.
        """
        assert self.redis is not None, "audit waits need the tree's Redis URL"

        async def scan() -> dict[str, str]:
            assert self.redis is not None
            last = b"0" if from_start else self._audit_last
            while True:
                reply = await self.redis.xread({keys.AUDIT: last}, block=1000)
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        if not from_start:
                            self._audit_last = entry_id
                        entry = {k.decode(): v.decode() for k, v in fields.items()}
                        if match(entry):
                            return entry

        return await asyncio.wait_for(scan(), within)

    async def audit(self) -> list[dict[str, str]]:
        assert self.redis is not None
        entries = await self.redis.xrange(keys.AUDIT)
        return [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]


async def replies_until(
    ws: aiohttp.ClientWebSocketResponse, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Read JSON replies until `done(replies)` holds."""
    replies: list[dict[str, Any]] = []
    while not done(replies):
        msg = await ws.receive(timeout=20)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"connection ended after {len(replies)} replies: {msg}")
        replies.append(json.loads(msg.data))
    return replies


def count(replies: list[dict[str, Any]], status: str) -> int:
    return sum(1 for r in replies if r["status"] == status)


async def stall_actor(
    ws: aiohttp.ClientWebSocketResponse, pid: int, chunks: int, size: int
) -> None:
    """Freeze the actor `pid` (SIGSTOP), then send `chunks` frames of `size` bytes: the
    gateway acks each (it is in the mailbox) and none can be transcribed yet.
    The caller resumes or kills the actor."""
    os.kill(pid, signal.SIGSTOP)
    for _ in range(chunks):
        await ws.send_bytes(b"\x00" * size)
    acks = await replies_until(ws, lambda r: count(r, "received") == chunks)
    assert count(acks, "transcript") == 0, "a frozen actor transcribed"
