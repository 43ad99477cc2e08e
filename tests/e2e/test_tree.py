"""The whole process tree: `hark up` as a subprocess, driven as its users drive it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from services.supervisor.tree import free_port
from tests.conftest import TreeFactory
from tests.tree import Tree, count, hark_command, replies_until

pytestmark = pytest.mark.timeout(90)


def exists(pid: int) -> bool:
    """Whether a process (a zombie too) with this id is in the process table."""
    return psutil.pid_exists(pid)


def children_of(pid: int) -> set[int]:
    """Every process whose parent is `pid`: the actors, and spares the status does not list."""
    return {child.pid for child in psutil.Process(pid).children()}


async def stream(ws: aiohttp.ClientWebSocketResponse, sizes: list[int]) -> list[dict[str, Any]]:
    """Send one chunk per size; the replies up to every ack and final."""
    for size in sizes:
        await ws.send_bytes(b"\x00" * size)
    n = len(sizes)
    return await replies_until(
        ws, lambda r: count(r, "received") == n and count(r, "transcript") == n
    )


async def test_hark_up_reports_every_actor_running(tree: Tree) -> None:
    report = await tree.status()
    assert report["healthy"] is True and report["state"] == "OK"
    names = [a["name"] for a in report["actors"]]
    assert names == ["transcriber-0", "transcriber-1", "gateway"]
    assert all(a["state"] == "RUNNING" and a["pid"] for a in report["actors"])

    code, table = await tree.cli("status")
    assert code == 0
    lines = table.splitlines()
    assert lines[0].startswith("tree OK")
    for column in ("NAME", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "HEARTBEAT"):
        assert column in lines[1]
    assert [line.split()[0] for line in lines[2:]] == names

    code, text = await tree.cli("status", "--json")
    assert code == 0 and '"healthy": true' in text
    async with aiohttp.ClientSession() as http, http.get(f"{tree.status_url}/health") as resp:
        assert resp.status == 200


async def test_client_gets_a_greeting_then_an_ack_and_a_final_per_chunk(tree: Tree) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        hello = await ws.receive_json(timeout=10)
        assert hello["status"] == "ready" and hello["actor"] in ("transcriber-0", "transcriber-1")
        replies = await stream(ws, [3200] * 10)
    acks = [r for r in replies if r["status"] == "received"]
    finals = [r for r in replies if r["status"] == "transcript"]
    assert [a["seq"] for a in acks] == list(range(1, 11))
    assert [f["seq"] for f in finals] == list(range(1, 11))
    assert all(f["client_id"] == hello["client_id"] and f["final"] for f in finals)
    assert all(f["text"].endswith("(size: 3200 bytes)") for f in finals)


async def test_twenty_clients_see_only_their_own_transcripts_and_none_twice(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, transcribers=3)

    async def client(
        index: int, http: aiohttp.ClientSession
    ) -> tuple[str, str, list[dict[str, Any]]]:
        async with http.ws_connect(tree.ws_url) as ws:
            hello = await ws.receive_json(timeout=10)
            # Sizes unique to this client, so a transcript shows whose audio it was.
            replies = await stream(ws, [1000 * (index + 1) + seq for seq in range(1, 21)])
            return hello["client_id"], hello["session_id"], replies

    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(*(client(i, http) for i in range(20)))

    for index, (client_id, _, replies) in enumerate(results):
        finals = [r for r in replies if r["status"] == "transcript"]
        assert {f["client_id"] for f in finals} == {client_id}
        expected = [f"(size: {1000 * (index + 1) + seq} bytes)" for seq in range(1, 21)]
        texts = [f["text"] for f in finals]
        assert len(texts) == len(expected)
        assert all(t.endswith(e) for t, e in zip(texts, expected, strict=True)), texts
    transcribed = Counter(
        (e["session"], e["seq"]) for e in await tree.audit() if e["event"] == "transcript"
    )
    assert len(transcribed) == 20 * 20
    assert set(transcribed.values()) == {1}, "some chunk was transcribed more than once"
    actors = {e["actor"] for e in await tree.audit() if e["event"] == "transcript"}
    assert len(actors) == 3, f"sessions were not spread over the pool: {actors}"


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")


async def test_killed_transcriber_comes_back_under_its_name_and_no_audio_is_lost(
    tree: Tree,
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        hello = await ws.receive_json(timeout=10)
        name = hello["actor"]
        before = await tree.actor(name)
        await stream(ws, [100] * 5)

        os.kill(before["pid"], signal.SIGKILL)
        # Audio sent while the actor is dead waits in its mailbox.
        for _ in range(5):
            await ws.send_bytes(b"\x00" * 200)
        await tree.wait_audit(lambda e: e["event"] == "actor_ready" and e.get("child") == name)
        replies = await replies_until(
            ws, lambda r: count(r, "received") == 5 and count(r, "transcript") == 5
        )
    assert [r["seq"] for r in replies if r["status"] == "transcript"] == [6, 7, 8, 9, 10]

    after = await tree.actor(name)
    assert after["pid"] != before["pid"]
    assert after["restarts"] == 1 and after["last_exit"] == "killed by SIGKILL"
    assert after["last_restart_ms"] is not None
    # The warm spare that took over says in `ps` which actor it is (it said `--name -`).
    cmdline = _cmdline(after["pid"])
    assert f"--name {name}".encode() in cmdline, cmdline
    events = [(e["event"], e.get("child")) for e in await tree.audit()]
    assert ("actor_exit", name) in events and ("actor_restart", name) in events
    code, _ = await tree.cli("status")
    assert code == 0


async def test_killed_gateway_comes_back_and_takes_new_sessions(tree: Tree) -> None:
    before = await tree.actor("gateway")
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(tree.ws_url) as ws:
            await ws.receive_json(timeout=10)
            os.kill(before["pid"], signal.SIGKILL)
            msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.ERROR)  # fmt: skip
        await tree.wait_audit(lambda e: e["event"] == "actor_ready" and e.get("child") == "gateway")
        async with http.ws_connect(tree.ws_url) as ws:
            assert (await ws.receive_json(timeout=10))["status"] == "ready"
            replies = await stream(ws, [64])
    assert count(replies, "transcript") == 1
    after = await tree.actor("gateway")
    assert after["pid"] != before["pid"] and after["restarts"] == 1
    assert (await tree.status())["healthy"] is True


async def test_actor_crashing_past_the_intensity_limit_is_fatal_and_reported(
    start_tree: TreeFactory, redis_url: str
) -> None:
    tree = await start_tree(redis_url=redis_url, env={"HARK_RESTART_INTENSITY": "0"})
    victim = await tree.actor("transcriber-1")
    os.kill(victim["pid"], signal.SIGKILL)
    await tree.wait_audit(lambda e: e["event"] == "actor_fatal" and e["child"] == "transcriber-1")
    assert (await tree.actor("transcriber-1"))["state"] == "FATAL"
    code, table = await tree.cli("status")
    assert code == 1 and "FATAL" in table
    async with aiohttp.ClientSession() as http, http.get(f"{tree.status_url}/health") as resp:
        assert resp.status == 503


async def test_status_of_an_unreachable_supervisor_exits_2(tree: Tree) -> None:
    code, out = await tree.cli("status", "--url", f"http://127.0.0.1:{free_port()}")
    assert code == 2 and "not reachable" in out


async def test_ctrl_c_stops_the_whole_tree_with_embedded_redis_and_leaves_no_process(
    start_tree: TreeFactory,
) -> None:
    tree = await start_tree()  # no Redis URL: hark up starts its own
    report = await tree.status()
    pids = {a["name"]: a["pid"] for a in report["actors"]}
    assert set(pids) == {"redis", "transcriber-0", "transcriber-1", "gateway"}
    assert report["healthy"]
    assert tree.proc is not None
    spawned = children_of(tree.proc.pid)
    assert set(pids.values()) <= spawned
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        await ws.receive_json(timeout=10)
        assert count(await stream(ws, [10]), "transcript") == 1

    assert await tree.stop() == 0
    left = [name for name, pid in pids.items() if exists(pid)]
    assert left == [], f"processes left behind: {left}"
    assert not [pid for pid in spawned if exists(pid)], "a spare was left behind"


async def test_taken_gateway_port_fails_hark_up_at_once_with_a_clear_message(
    start_tree: TreeFactory, redis_url: str
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        tree = Tree(Path(tempfile.mkdtemp()) / "hark.log", redis_url=redis_url)
        tree.port = squatter.getsockname()[1]
        with pytest.raises(RuntimeError, match="exited early"):
            await tree.start()
        assert await tree.stop() == 1
    log = tree.log_tail()
    assert "cannot listen on 127.0.0.1" in log and "gateway failed to start" in log
    assert "choose another with --port" in log
    assert "Traceback" not in log


async def test_supervisor_killed_with_sigkill_takes_its_children_with_it(
    start_tree: TreeFactory,
) -> None:
    tree = await start_tree()  # embedded Redis too
    assert tree.proc is not None
    pids = {str(pid): pid for pid in children_of(tree.proc.pid)}  # actors and spares
    assert len(pids) >= 4
    fds = {name: os.pidfd_open(pid) for name, pid in pids.items()}
    tree.proc.kill()
    loop = asyncio.get_running_loop()

    async def gone(fd: int) -> None:
        exited = loop.create_future()
        loop.add_reader(fd, exited.set_result, None)  # a pidfd turns readable at exit
        try:
            await asyncio.wait_for(exited, 15)
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    await asyncio.gather(*(gone(fd) for fd in fds.values()))


async def test_hark_audit_prints_the_log_filters_by_session_and_follows(tree: Tree) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
        hello = await ws.receive_json(timeout=10)
        await stream(ws, [10, 20])
    sid = hello["session_id"]
    await tree.wait_audit(lambda e: e["event"] == "session_close" and e.get("session") == sid)

    code, out = await tree.cli("audit")
    assert code == 0
    events = [line.split()[2] for line in out.splitlines()]
    assert "supervisor_start" in events and "session_open" in events

    code, out = await tree.cli("audit", "--session", sid, "--json")
    entries = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and {e["session"] for e in entries} == {sid}
    assert [e["event"] for e in entries] == [
        "session_open", "transcript", "transcript", "session_close",
    ]  # fmt: skip
    assert [e["seq"] for e in entries if e["event"] == "transcript"] == ["1", "2"]

    follower = await asyncio.create_subprocess_exec(
        *hark_command(), "audit", "--follow", "-n", "1", "--url", tree.status_url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert follower.stdout is not None
        # Its first line (the newest entry) shows it is following from there on.
        assert await asyncio.wait_for(follower.stdout.readline(), 20)
        async with aiohttp.ClientSession() as http, http.ws_connect(tree.ws_url) as ws:
            new = (await ws.receive_json(timeout=10))["session_id"]
        assert follower.stdout is not None
        while True:  # the new session's opening shows up while --follow runs
            line = (await asyncio.wait_for(follower.stdout.readline(), 20)).decode()
            assert line, "hark audit --follow exited"
            assert "Traceback" not in line and "not reachable" not in line, line
            if "session_open" in line and new in line:
                break
    finally:
        follower.terminate()
        await follower.wait()


async def test_a_dotenv_file_is_read_and_the_environment_wins_over_it(
    tree: Tree, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(f"HARK_STATUS_PORT={tree.status_port}\n")

    async def status(env: dict[str, str]) -> int:
        proc = await asyncio.create_subprocess_exec(
            *hark_command(), "status", cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return await asyncio.wait_for(proc.wait(), 30)

    clean = {k: v for k, v in os.environ.items() if not k.startswith("HARK_")}
    assert await status(clean) == 0  # found the tree through .env alone
    assert await status({**clean, "HARK_STATUS_PORT": str(free_port())}) == 2


async def test_status_watch_redraws_the_table(tree: Tree) -> None:
    proc = await asyncio.create_subprocess_exec(
        *hark_command(), "status", "--watch", "--url", tree.status_url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        tables = 0
        while tables < 2:
            line = await asyncio.wait_for(proc.stdout.readline(), 10)
            assert line, "hark status --watch exited"
            tables += line.startswith(b"tree OK")
    finally:
        proc.terminate()
        await proc.wait()
