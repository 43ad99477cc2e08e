"""Secrets stay out of every command line of the tree, which any user can read in
/proc/PID/cmdline, and out of what hark prints."""

from __future__ import annotations

import asyncio
import os
import re
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import TreeFactory, redis_process

pytestmark = pytest.mark.timeout(60)


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return bytes(resp.read())


def _cmdlines(pids: list[int]) -> dict[int, bytes]:
    out = {}
    for pid in pids:
        try:
            out[pid] = _read(f"/proc/{pid}/cmdline")
        except OSError:
            continue  # gone meanwhile
    return out


def _descendants(pid: int) -> list[int]:
    top = psutil.Process(pid)
    return [pid, *(child.pid for child in top.children(recursive=True))]


async def test_no_command_line_of_the_tree_holds_the_redis_password(
    start_tree: TreeFactory,
) -> None:
    tree = await start_tree()  # the embedded Redis, with a random password
    status = await tree.status()
    gateway = next(a for a in status["actors"] if a["name"] == "gateway")
    environ = _read(f"/proc/{gateway['pid']}/environ").split(b"\0")
    url = next(v for v in environ if v.startswith(b"HARK_REDIS_URL=")).decode()
    password = re.search(r"//:([^@]+)@", url)
    assert password is not None, url
    secret = password.group(1).encode()
    assert tree.proc is not None
    pids = _descendants(tree.proc.pid)
    assert len(pids) >= 5  # the supervisor, Redis, the gateway, transcribers, spares
    for pid, cmdline in _cmdlines(pids).items():
        assert secret not in cmdline, f"pid {pid}: {cmdline!r}"
    assert secret not in await asyncio.to_thread(_get, f"{tree.status_url}/status")
    assert secret not in _read(str(tree.log_path))


@pytest.mark.parametrize("passed", ["--redis-url", "HARK_REDIS_URL"])
async def test_a_query_password_is_shown_nowhere_and_the_command_line_is_warned_of(
    start_tree: TreeFactory, passed: str
) -> None:
    # redis-py takes `?password=`: /config (open to anyone), the banner and the logs
    # printed it in clear. Given with --redis-url it is in the supervisor's command line
    # for every user to read: hark up says so; given in the environment it is not.
    secret = "S3cret-" + os.urandom(6).hex()
    with redis_process("--requirepass", secret) as url:
        with_password = f"{url}?password={secret}"
        if passed == "--redis-url":
            tree = await start_tree(redis_url=with_password)
        else:
            tree = await start_tree(env={"HARK_REDIS_URL": with_password})
        status = await tree.status()
        assert status["healthy"] is True
        gateway = next(a for a in status["actors"] if a["name"] == "gateway")
        config = (await asyncio.to_thread(_get, f"http://127.0.0.1:{tree.port}/config")).decode()
        assert secret not in config and "password=***" in config
        log = _read(str(tree.log_path)).decode()
        assert secret not in log and secret not in "\n".join(tree.banner)
        warned = "can be read by every user" in log
        assert warned == (passed == "--redis-url")
        assert secret.encode() not in _read(f"/proc/{gateway['pid']}/cmdline")
        await tree.stop()
