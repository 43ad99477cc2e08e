"""The Redis client every actor uses (shared.redis_util.connect), against a real Redis."""

from __future__ import annotations

import asyncio
import socket
import stat
from pathlib import Path

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from services.supervisor.tree import embedded_redis
from shared.redis_util import (
    MAX_CONNECTIONS,
    UNIX_SEND_BUFFER,
    Coalescer,
    Wire,
    connect,
    raw_stream_entries,
)

pytestmark = pytest.mark.timeout(30)


async def test_a_burst_past_the_pool_size_waits_for_connections_instead_of_failing(
    redis_url: str,
) -> None:
    # A few hundred sessions closing at once each write an audit entry: redis-py's
    # default pool answered the 101st with MaxConnectionsError.
    client = connect(redis_url, name="burst-test")
    try:
        burst = 5 * MAX_CONNECTIONS
        replies = await asyncio.gather(*(client.xadd("burst", {"n": i}) for i in range(burst)))
        assert len(set(replies)) == burst
        assert await client.xlen("burst") == burst
        clients = [c for c in await client.client_list() if c["name"] == "burst-test"]
        assert 1 < len(clients) <= MAX_CONNECTIONS
    finally:
        await client.aclose()


async def test_commands_are_packed_by_hiredis_and_read_back_intact(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        blob = b"\x00\xff" * 2000
        await client.hset("packed", mapping={"bytes": blob, "int": 7, "float": 1.5, "text": "ü"})
        assert await client.hgetall("packed") == {
            b"bytes": blob,
            b"int": b"7",
            b"float": b"1.5",
            b"text": "ü".encode(),
        }
        assert await client.execute_command("CONFIG GET", "maxmemory")  # a two-word command
        await client.set("view", memoryview(b"abc"))
        assert await client.get("view") == b"abc"
    finally:
        await client.aclose()


async def test_the_coalescer_keeps_order_skips_cancelled_commands_and_reports_its_lag(
    redis_url: str,
) -> None:
    client, pauser = connect(redis_url), connect(redis_url)
    coalescer = Coalescer(client)
    try:
        assert coalescer.lag_s() == 0.0
        futures = [coalescer.submit("RPUSH", "order", i) for i in range(5)]
        futures[2].cancel()  # before its pipeline left: never sent
        await asyncio.wait(futures)
        assert await client.lrange("order", 0, -1) == [b"0", b"1", b"3", b"4"]

        # Short: Redis 6.2's UNPAUSE leaves the pause's end time behind, and a later
        # CLIENT PAUSE (another test's) would last until it.
        await pauser.client_pause(1000, all=False)
        paused = coalescer.submit("RPUSH", "order", 5)
        waited = asyncio.get_running_loop().time()
        await asyncio.wait([paused], timeout=0.2)  # not done: Redis holds writes
        assert not paused.done()
        # The clock is read before the lag: it moves between the two reads.
        elapsed = asyncio.get_running_loop().time() - waited
        assert coalescer.lag_s() >= elapsed >= 0.2
        await pauser.execute_command("CLIENT", "UNPAUSE")
        await paused
        assert coalescer.lag_s() == 0.0
        assert (coalescer.submitted, coalescer.answered) == (6, 5)  # the cancelled one
    finally:
        await pauser.execute_command("CLIENT", "UNPAUSE")
        await coalescer.close()
        await client.aclose()
        await pauser.aclose()


async def test_the_wire_reads_raw_replies_in_order_and_never_mixes_up_a_broken_round_trip(
    redis_url: str,
) -> None:
    client = connect(redis_url, name="wire-test")
    wire = Wire(client)
    try:
        await client.xadd("s", {"f": "v"}, id="1-1")
        replies = await wire.execute([("SET", "k", b"\x00v"), ("GET", "k"), ("INCR", "k"),
                                      ("XRANGE", "s", "-", "+")])  # fmt: skip
        assert replies[:2] == [b"OK", b"\x00v"]
        assert isinstance(replies[2], ResponseError)  # in its place, not raised
        assert raw_stream_entries(replies[3]) == [(b"1-1", {b"f": b"v"})]  # RESP2's shape
        with pytest.raises(ResponseError):
            await wire.execute([("INCR", "k"), ("PING",)], raise_on_error=True)

        # A round trip cancelled while Redis holds its reply: the next one does not get it.
        blocked = asyncio.create_task(wire.execute([("BLPOP", "queue", 5)]))
        while (await client.info("clients"))["blocked_clients"] == 0:
            pass  # until Redis holds the BLPOP
        blocked.cancel()
        await asyncio.wait([blocked])
        while (await client.info("clients"))["blocked_clients"] != 0:
            pass  # until Redis has seen the connection go
        await client.rpush("queue", "item")  # would answer the BLPOP had it stayed
        assert await wire.execute([("GET", "k")]) == [b"\x00v"]
        assert await client.llen("queue") == 1  # the BLPOP's connection was dropped

        # A connection lost between round trips: the next one fails with a Redis
        # ConnectionError (what every caller handles), the one after reconnects.
        await client.client_kill_filter(_type="normal", skipme=True)
        with pytest.raises(RedisConnectionError):
            await wire.execute([("PING",)])
        assert await wire.execute([("PING",)]) == [b"PONG"]
    finally:
        await wire.close()
        await client.aclose()


async def test_commands_sent_ahead_reach_redis_at_once_and_their_replies_never_mix_in(
    redis_url: str,
) -> None:
    client = connect(redis_url, name="wire-send-test")
    wire = Wire(client)
    try:
        with pytest.raises(RedisConnectionError):  # nothing to send them on yet
            wire.send([("SET", "early", "1")])
        await wire.execute([("PING",)])
        wire.send([("SET", "k", "1"), ("INCR", "k")])
        # Redis runs them without a round trip of the sender's: another client sees them.
        while await client.get("k") != b"2":
            pass
        assert await wire.execute([("GET", "k")]) == [b"2"]  # its own replies only
        assert wire.owed == 0
        # An error reply to a command sent ahead is raised by the next round trip, which
        # still reads every reply: the one after it is in step.
        await client.set("not-a-number", "x")
        wire.send([("INCR", "not-a-number"), ("SET", "n", "x")])
        with pytest.raises(ResponseError):
            await wire.execute([("GET", "k")])
        assert await wire.execute([("GET", "n")]) == [b"x"]
    finally:
        await wire.close()
        await client.aclose()


async def test_the_embedded_redis_listens_on_a_unix_socket_every_connection_kind_reaches(
    tmp_path: Path,
) -> None:
    # HARK_REDIS_URL=unix://... passed the settings' check, then failed at the first
    # command: redis-py's Unix socket connections refuse the TCP keepalive option.
    spec, url = embedded_redis(tmp_path)
    assert url.startswith("unix://") and spec.stdin is not None  # its password, on stdin
    assert not any(a == "--bind" for a in spec.argv)  # no TCP port
    # The last option wins: "notice" makes the server say when it is ready, on stdout.
    proc = await asyncio.create_subprocess_exec(*spec.argv, "--loglevel", "notice",
                                                "--logfile", "", stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdin.write(spec.stdin)
        proc.stdin.close()
        # 6.2 says "... now ready to accept connections at PATH".
        while b"ready to accept connections" not in (line := await proc.stdout.readline()).lower():
            assert line, f"redis-server exited with {await proc.wait()}"
        assert stat.S_IMODE((tmp_path / "redis.sock").stat().st_mode) == 0o700
        client = connect(url, name="unix-test")
        wire, coalescer = Wire(client), Coalescer(client)
        try:
            assert await client.ping()
            assert await wire.execute([("SET", "k", "v"), ("GET", "k")]) == [b"OK", b"v"]
            assert await coalescer.execute("GET", "k") == b"v"
            # A raw connection's send buffer is grown: the kernel never grows a Unix
            # socket's, and at its default a gateway's pipelines of audio crawled out.
            # Linux keeps twice what is asked, capped at net.core.wmem_max.
            cap = _wmem_max()
            for raw in (wire, coalescer._wire):
                sock = raw._conn._writer.transport.get_extra_info("socket")
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) >= min(
                    UNIX_SEND_BUFFER, cap
                )
        finally:
            await coalescer.close()
            await wire.close()
            await client.aclose()
    finally:
        proc.terminate()
        await proc.wait()


def _wmem_max() -> int:
    return int(Path("/proc/sys/net/core/wmem_max").read_text())
