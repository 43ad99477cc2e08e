"""The load generator: C WebSocket clients streaming 3,200-byte chunks at hark, and
the same clients at a bare echo server in the same run, for the ceiling.

    python -m bench.load --clients 100 --seconds 10                 # real time
    python -m bench.load --clients 50 --mode rate --rate 5000       # open loop
    python -m bench.load --clients 50 --mode max --window 8         # as fast as acked

Modes: `realtime` (each client 10 chunks/s: 100 ms of 16 kHz 16-bit audio each),
`rate` (open loop, `--rate` chunks/s over all clients), `max` (closed loop, each
client keeps `--window` chunks in flight). Without `--url` it starts `hark up
--engine mock` on free loopback ports (embedded Redis) and stops it at the end.
Clients run in `--procs` processes, so the client is not the bottleneck, and are
picows's (Cython) WebSocket clients, driven by callbacks: on the same machine as the
server, aiohttp's clients cost a quarter more CPU a chunk and ran their event loop up
to 29 ms late, which the latency figures then counted as the server's (RESULTS.md,
seventh round). Every run is bounded: `--seconds` of sending, then at most `--drain`
seconds for the rest.

Prints one JSON line per target: chunks/s acked and transcribed, latency
percentiles (send -> ack, send -> transcript), lost / duplicated / misrouted results
(must all be 0; chunks refused and chunks of sessions the server shed are counted
apart), errors by code, the server processes' RSS and CPU, and the generator's own CPU
and event-loop lateness (a late generator measures itself as much as the server).
With `--timeline S` the line also holds the run slice by slice, S seconds each: when
the finals came (seconds after sending began), how many, their latency's p50 and p99;
a tail made of episodes shows there as the slices it came from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil
from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSInvalidStatusError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from services.supervisor.tree import free_port

CHUNK = 3200  # 100 ms of 16 kHz 16-bit mono
REALTIME_HZ = 10
CONNECTS_AT_ONCE = 50
LOOP_TICK_S = 0.05
CLOSE_WAIT_S = 5.0  # for the server's end of a close, before the socket is dropped
# Errors that answer a chunk in place of its ack: the chunk was not stored.
CHUNK_REFUSALS = frozenset({"overloaded", "unavailable", "shutting_down", "session_closing"})


@dataclass
class Tally:
    """What one process's clients saw."""

    clients: int = 0
    connected: int = 0
    sent: int = 0
    acked: int = 0
    refused: int = 0  # chunks answered with a refusal (not stored, so not lost)
    shed: int = 0  # chunks unanswered when the server shed their session (resume finds them)
    transcribed: int = 0
    duplicated: int = 0
    misrouted: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    ack_ms: list[float] = field(default_factory=list)
    final_ms: list[float] = field(default_factory=list)
    final_at: list[float] = field(default_factory=list)  # with --timeline: s after start_at
    # The generator's own health: CPU it used, and how late its event loop ran a timer
    # (sampled every LOOP_TICK_S). A late generator reads replies late, and its latency
    # figures then measure itself as much as the server.
    cpu_s: float = 0.0
    loop_late_ms: list[float] = field(default_factory=list)

    def add(self, other: Tally) -> None:
        for name in ("clients", "connected", "sent", "acked", "refused", "transcribed",
                     "duplicated", "misrouted", "shed", "cpu_s"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.update(other.errors)
        self.ack_ms += other.ack_ms
        self.final_ms += other.final_ms
        self.final_at += other.final_at
        self.loop_late_ms += other.loop_late_ms


@dataclass(frozen=True)
class Plan:
    url: str
    echo: bool
    mode: str
    clients: int
    seconds: float
    rate: float
    window: int
    drain: float
    start_at: float  # wall clock: every process starts sending together
    timeline: float = 0.0  # slice of the timeline in seconds (0: none kept)


class _Client(WSListener):
    """One streaming client. It reads in picows's frame callback as each frame arrives
    and sends from timer and reply callbacks (see `stream`): no task to wake, no await
    per chunk or reply, so the generator spends its time sending and reading rather
    than scheduling (its own lateness is measured with the server's latency: see Tally)."""

    def __init__(self, plan: Plan, tally: Tally) -> None:
        self.plan, self.tally = plan, tally
        self.loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.client_id: str | None = None
        self.sent_at: dict[int, float] = {}
        # The server numbers the chunks it stores; a refused one gets no number. Replies
        # to chunks come in order, so each ack or refusal answers the oldest unanswered.
        self.unanswered: deque[int] = deque()
        self.ours: dict[int, int] = {}  # server seq -> our seq
        self.finals: set[int] = set()
        self.payload = bytearray(CHUNK)
        self.interval = {"realtime": 1 / REALTIME_HZ,
                         "rate": plan.clients / plan.rate if plan.rate else 0,
                         "max": 0.0}[plan.mode]  # fmt: skip
        self.transport: WSTransport | None = None  # while sending
        # perf_counter() + this = seconds since plan.start_at (kept with --timeline)
        self.since_start = time.time() - time.perf_counter() - plan.start_at
        self.t0 = 0.0  # when it started sending (perf_counter)
        # Chunks it may send now: a tick of its clock adds one (realtime, rate), an
        # answered chunk gives its place in the window back (max).
        self.credits = plan.window if plan.mode == "max" else 0
        self.seq = 0
        self.paused = False  # the socket's buffer is full: it waits, as a real client does
        self.sending_done = self.loop.create_future()
        self.all_done = asyncio.Event()
        self.gone = False  # the connection is closed
        self.sending_over = False
        self.shed = False  # the server closed the session for overload

    # -- picows's callbacks -----------------------------------------------------------

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = time.perf_counter()
        kind = frame.msg_type
        if not frame.fin:  # neither hark nor the echo server fragments its replies
            self.tally.errors["fragmented reply"] += 1
        elif kind == WSMsgType.BINARY:  # echo: the payload starts with our seq
            if self.unanswered:
                self.unanswered.popleft()
            self.tally.acked += 1
            self._final(int.from_bytes(frame.get_payload_as_memoryview()[:8], "big"), now)
        elif kind == WSMsgType.TEXT:
            reply = json.loads(frame.get_payload_as_bytes())
            if not self.plan.echo and not self.hello.done():
                self.hello.set_result(reply)
            else:
                self._reply(reply, now)
        elif kind == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gone = True
        self._stop_sending()
        self.all_done.set()
        if not self.plan.echo and not self.hello.done():
            self.hello.set_exception(ConnectionError("closed before its greeting"))

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    # -- replies ------------------------------------------------------------------------

    def _reply(self, reply: dict[str, Any], now: float) -> None:
        status, code = reply.get("status"), reply.get("code", "error")
        if status == "received" and self.unanswered:
            seq = self.ours[reply["seq"]] = self.unanswered.popleft()
            self.tally.acked += 1
            self.tally.ack_ms.append((now - self.sent_at[seq]) * 1000)
        elif status == "transcript" and reply.get("final", True):
            if reply.get("client_id") != self.client_id:
                self.tally.misrouted += 1
            self._final(self.ours.get(reply.get("seq", -1), -1), now)
        elif status == "error":
            self.tally.errors[code] += 1
            if code in CHUNK_REFUSALS and self.unanswered:
                self._refused(self.unanswered.popleft())
            elif code == "session_shed":
                self.shed = True

    def _refused(self, seq: int) -> None:
        del self.sent_at[seq]  # not stored: no final is owed for it
        self.tally.refused += 1
        if self.plan.mode == "max":
            self._credit()
        self._settled()

    def _final(self, seq: int, now: float) -> None:
        if seq in self.finals:
            self.tally.duplicated += 1
            return
        if seq in self.sent_at:
            self.finals.add(seq)
            self.tally.transcribed += 1
            self.tally.final_ms.append((now - self.sent_at[seq]) * 1000)
            if self.plan.timeline:
                self.tally.final_at.append(now + self.since_start)
            if self.plan.mode == "max":
                self._credit()
        self._settled()

    def _settled(self) -> None:
        if self.sending_over and len(self.finals) >= len(self.sent_at):
            self.all_done.set()

    # -- sending --------------------------------------------------------------------------

    async def stream(self, transport: WSTransport, index: int) -> None:
        """Send chunks for the plan's seconds, wait (bounded) for what is owed, close.

        Sending is driven by callbacks, not a coroutine: a timer per chunk in the paced
        modes, each answer in `max`; a chunk that falls due while the socket is full
        goes out when it drains (so a client that fell behind catches up at once, as
        a microphone's does)."""
        plan = self.plan
        # Spread the clients over one interval, so they do not all send at the same instant.
        offset = self.interval * index / max(1, plan.clients)
        await asyncio.sleep(max(0.0, plan.start_at - time.time()) + offset)
        self.transport, self.t0 = transport, time.perf_counter()
        end = self.loop.call_later(plan.seconds, self._stop_sending)
        if plan.mode == "max":
            self._pump()
        else:
            self._tick()
        try:
            await self.sending_done
            self._settled()
            await asyncio.wait_for(self.all_done.wait(), plan.drain)
        except TimeoutError:
            pass
        finally:
            end.cancel()
            self._stop_sending()
            if not self.gone:
                transport.send_close(WSCloseCode.OK)
                with contextlib.suppress(TimeoutError):  # the server closes its end
                    await asyncio.wait_for(transport.wait_disconnected(), CLOSE_WAIT_S)
                transport.disconnect()
            if self.shed:  # a resume would tell which of them were stored: not lost, not counted
                self.tally.shed += len(self.sent_at) - len(self.finals)

    def _tick(self) -> None:
        """The paced modes' clock: one more chunk due, and the next tick set."""
        if self.sending_over:
            return
        self._credit()
        due = self.t0 + (self.seq + self.credits) * self.interval - time.perf_counter()
        self.loop.call_at(self.loop.time() + due, self._tick)

    def _credit(self) -> None:
        self.credits += 1
        self._pump()

    def _pump(self) -> None:
        """Send what is due, unless sending is over or the socket is full."""
        transport = self.transport
        while self.credits and not self.paused and not self.sending_over and transport:
            self.credits -= 1
            self.seq += 1
            self.payload[:8] = self.seq.to_bytes(8, "big")
            self.sent_at[self.seq] = time.perf_counter()
            self.unanswered.append(self.seq)
            transport.send(WSMsgType.BINARY, self.payload)
            self.tally.sent += 1

    def _stop_sending(self) -> None:
        self.sending_over = True
        if not self.sending_done.done():
            self.sending_done.set_result(None)


async def _client(plan: Plan, index: int, tally: Tally, gate: asyncio.Semaphore) -> None:
    async with gate:
        try:
            transport, client = await ws_connect(lambda: _Client(plan, tally), plan.url,
                                                 max_frame_size=1 << 20)  # fmt: skip
        except WSInvalidStatusError as exc:
            status = exc.response.status if exc.response is not None else "?"
            tally.errors[f"connect: HTTP {status}"] += 1
            return
        except (WSError, OSError, TimeoutError) as exc:
            tally.errors[f"connect: {type(exc).__name__}"] += 1
            return
        assert isinstance(client, _Client)
        if not plan.echo:
            try:
                hello = await asyncio.wait_for(client.hello, 30)
            except (TimeoutError, ConnectionError):
                tally.errors["connect: no greeting"] += 1
                transport.disconnect()
                return
            if hello.get("status") == "error":
                tally.errors[hello.get("code", "refused")] += 1
                transport.send_close(WSCloseCode.OK)
                transport.disconnect()
                return
            client.client_id = hello["client_id"]
    tally.connected += 1
    await client.stream(transport, index)


async def _sample_loop(late_ms: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + LOOP_TICK_S
        await asyncio.sleep(LOOP_TICK_S)
        late_ms.append(max(0.0, loop.time() - due) * 1000)


def _run_clients(plan: Plan, first: int, count: int) -> Tally:
    async def run() -> Tally:
        tally = Tally(clients=count)
        gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
        cpu0 = time.process_time()
        sampler = asyncio.create_task(_sample_loop(tally.loop_late_ms))
        await asyncio.gather(*(_client(plan, first + i, tally, gate) for i in range(count)))
        sampler.cancel()
        tally.cpu_s = time.process_time() - cpu0
        return tally

    try:
        import uvloop

        return uvloop.run(run())
    except ImportError:  # pragma: no cover
        return asyncio.run(run())


def drive(plan: Plan, procs: int) -> Tally:
    """Run the plan's clients in `procs` processes; their tallies added up."""
    shares = [plan.clients // procs + (1 if i < plan.clients % procs else 0) for i in range(procs)]
    total = Tally()
    with ProcessPoolExecutor(procs) as pool:
        starts = [sum(shares[:i]) for i in range(procs)]
        for tally in pool.map(_run_clients, [plan] * procs, starts, shares):
            total.add(tally)
    return total


# -- the servers under test ------------------------------------------------------------


class Server:
    """A server subprocess that says when it is up; stopped with SIGINT."""

    def __init__(self, argv: list[str], ready: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=sys.stderr,
                                     env={**os.environ, **(env or {})}, text=True)  # fmt: skip
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(ready):
                return
        raise RuntimeError(f"{argv[0]} exited before it was ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Hark(Server):
    """`hark up` (the mock engine unless told) on free loopback ports with its embedded
    Redis."""

    def __init__(
        self, transcribers: int = 2, env: dict[str, str] | None = None, engine: str = "mock"
    ) -> None:
        self.port, status_port = free_port(), free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.status_url = f"http://127.0.0.1:{status_port}"
        script = os.path.join(os.path.dirname(sys.executable), "hark")
        super().__init__([script, "up", "--engine", engine, "--transcribers", str(transcribers),
                          "--port", str(self.port), "--status-port", str(status_port)],
                         "Ctrl-C", env={"HARK_LOG_LEVEL": "WARNING", **(env or {})})  # fmt: skip


def arg_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=f"python -m {prog}", description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process so far."""
    times = psutil.Process(pid).cpu_times()
    return times.user, times.system


def _rss_mb(pid: int) -> float:
    rss: int = psutil.Process(pid).memory_info().rss
    return rss / 2**20


def _actors(status_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{status_url}/status", timeout=5) as resp:
        report = json.load(resp)
    return {a["name"]: a["pid"] for a in report["actors"] if a["pid"]}


def percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


def timeline(tally: Tally, slice_s: float) -> list[list[float | int | None]]:
    """[start of the slice (s), finals in it, their latency's p50, p99] per slice."""
    slices: dict[int, list[float]] = {}
    for at, ms in zip(tally.final_at, tally.final_ms, strict=True):
        slices.setdefault(int(at // slice_s), []).append(ms)
    out: list[list[float | int | None]] = []
    for k, latencies in sorted(slices.items()):
        q = percentiles(latencies)
        out.append([round(k * slice_s, 3), len(latencies), q["p50"], q["p99"]])
    return out


def report(
    target: str, plan: Plan, tally: Tally, wall: float, extra: dict[str, Any]
) -> dict[str, Any]:
    if plan.timeline:
        extra = {**extra, "timeline": timeline(tally, plan.timeline)}
    return {
        "target": target, "mode": plan.mode, "clients": plan.clients,
        "connected": tally.connected, "seconds": plan.seconds,
        "sent": tally.sent, "sent_per_s": round(tally.sent / wall), "acked": tally.acked,
        "refused": tally.refused, "transcribed": tally.transcribed,
        "acked_per_s": round(tally.acked / wall),
        "transcribed_per_s": round(tally.transcribed / wall),
        "shed": tally.shed,
        "lost": tally.sent - tally.refused - tally.shed - tally.transcribed,
        "duplicated": tally.duplicated,
        "misrouted": tally.misrouted, "errors": dict(tally.errors),
        "ack_ms": percentiles(tally.ack_ms), "transcript_ms": percentiles(tally.final_ms),
        **extra,
    }  # fmt: skip


def run_target(plan: Plan, procs: int, pids: dict[str, int]) -> tuple[Tally, float, dict[str, Any]]:
    cpu0 = {name: _cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.perf_counter()
    tally = drive(plan, procs)
    wall = time.perf_counter() - t0  # connecting and draining included: CPU is averaged
    done = max(1, tally.transcribed)
    usage = {}
    for name, pid in pids.items():
        (user0, sys0), (user, sys_) = cpu0[name], _cpu_seconds(pid)
        cpu = user - user0 + sys_ - sys0
        # CPU per chunk compares runs at different rates; cpu_pct is averaged over the
        # whole run, connecting and draining included. The system share is mostly
        # loopback TCP, whose receiving side the kernel charges to the sender.
        usage[name] = {"cpu_pct": round(100 * cpu / wall), "rss_mb": round(_rss_mb(pid), 1),
                       "cpu_us_per_chunk": round(cpu * 1e6 / done, 1),
                       "system_share": round((sys_ - sys0) / cpu, 2) if cpu else 0.0}  # fmt: skip
    generator = {"cpu_pct": round(100 * tally.cpu_s / wall),
                 "cpu_us_per_chunk": round(tally.cpu_s * 1e6 / done, 1),
                 "loop_late_ms": percentiles(tally.loop_late_ms)}  # fmt: skip
    return tally, plan.seconds, {"processes": usage, "generator": generator}


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser("bench.load", __doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--mode", choices=("realtime", "rate", "max"), default="realtime")
    parser.add_argument("--rate", type=float, default=0.0, help="chunks/s in all (mode rate)")
    parser.add_argument("--window", type=int, default=8, help="chunks in flight (mode max)")
    parser.add_argument("--procs", type=int, default=1, help="client processes")
    parser.add_argument("--drain", type=float, default=10.0)
    parser.add_argument("--transcribers", type=int, default=2)
    parser.add_argument("--url", help="a running hark's ws:// URL (default: start one)")
    parser.add_argument("--no-echo", action="store_true", help="skip the echo ceiling")
    parser.add_argument("--timeline", type=float, default=0.0, metavar="S",
                        help="also report the finals slice by slice, S seconds each")  # fmt: skip
    args = parser.parse_args(argv)
    if args.mode == "rate" and args.rate <= 0:
        parser.error("--mode rate needs --rate")
    if args.timeline < 0:
        parser.error("--timeline takes seconds > 0")

    def plan(url: str, echo: bool, mode: str) -> Plan:
        return Plan(url=url, echo=echo, mode=mode, clients=args.clients, seconds=args.seconds,
                    rate=args.rate, window=args.window, drain=args.drain,
                    start_at=time.time() + 1.0, timeline=args.timeline)  # fmt: skip

    ceiling = None
    if not args.no_echo:
        port = free_port()
        echo = Server([sys.executable, "-m", "bench.echo", "--port", str(port)], "READY")
        try:
            p = plan(f"ws://127.0.0.1:{port}/ws", True, "max")
            tally, wall, extra = run_target(p, args.procs, {"echo": echo.proc.pid})
        finally:
            echo.stop()
        line = report("echo", p, tally, wall, extra)
        ceiling = line["transcribed_per_s"]
        print(json.dumps(line), flush=True)

    hark = None
    url, pids = args.url, {}
    if url is None:
        hark = Hark(args.transcribers)
        url, pids = hark.url, _actors(hark.status_url)
    try:
        p = plan(url, False, args.mode)
        tally, wall, extra = run_target(p, args.procs, pids)
    finally:
        if hark is not None:
            hark.stop()
    line = report("hark", p, tally, wall, extra)
    if ceiling:
        line["ratio_to_echo"] = round(line["transcribed_per_s"] / ceiling, 3)
    print(json.dumps(line), flush=True)
    return 0 if line["lost"] == line["duplicated"] == line["misrouted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
