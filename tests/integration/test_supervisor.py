"""The supervisor's restart policy, with a scripted backend and a real Redis for its audit.

The backend's children are futures the test resolves, so each restart decision
is observed exactly, without processes or timing.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from signal import SIGKILL, SIGTERM

import pytest
from redis.asyncio import Redis

from services.supervisor import metrics
from services.supervisor.child import ChildSpec, Restart, State
from services.supervisor.commands import format_rows
from services.supervisor.monitor import check
from services.supervisor.supervisor import OperationError, StartupError, Supervisor
from shared import keys
from shared.config import Settings
from shared.messages import Heartbeat

pytestmark = pytest.mark.timeout(30)

_pids = itertools.count(1000)


class FakeHandle:
    """One incarnation: ready when told, exits when told (or when signalled)."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self._pid = next(_pids)
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.signals: list[int] = []

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def instance(self) -> str:
        return f"fake-{self._pid}"

    async def wait(self) -> int:
        return await asyncio.shield(self.exit)

    async def wait_ready(self) -> bool:
        return await asyncio.shield(self.ready)

    def signal(self, signum: int) -> None:
        self.signals.append(signum)
        if signum in (SIGTERM, SIGKILL) and not self.exit.done():
            self.exit.set_result(-signum)

    def crash(self, code: int = -SIGKILL) -> None:
        self.exit.set_result(code)


class FakeBackend:
    def __init__(self) -> None:
        self.spawned: asyncio.Queue[FakeHandle] = asyncio.Queue()
        self.ready_at_once = True

    async def spawn(self, spec: ChildSpec) -> FakeHandle:
        handle = FakeHandle(spec)
        if self.ready_at_once:
            handle.ready.set_result(True)
        await self.spawned.put(handle)
        return handle

    async def remove(self, name: str) -> None:
        pass

    async def close(self) -> None:
        pass

    async def next(self) -> FakeHandle:
        return await asyncio.wait_for(self.spawned.get(), 10)


def spec(restart: Restart = Restart.PERMANENT) -> ChildSpec:
    return ChildSpec(name="transcriber-0", role="transcriber", argv=("x",), restart=restart)


@pytest.fixture
def settings(redis_url: str) -> Settings:
    # Heartbeats far apart: scripted children never beat, and the monitor must not
    # take them for hung here.
    return Settings(redis_url=redis_url, heartbeat_interval=600, backoff_min=0.02,
                    backoff_max=1.0, restart_intensity=3, restart_period=60)  # fmt: skip


@pytest.fixture
async def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def make(settings: Settings, backend: FakeBackend) -> AsyncIterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for sup in made:
        await sup.stop()


async def started(
    made: list[Supervisor], settings: Settings, backend: FakeBackend, child: ChildSpec
) -> tuple[Supervisor, FakeHandle]:
    assert settings.redis_url is not None
    sup = Supervisor(settings, backend, [child], settings.redis_url)
    made.append(sup)
    await sup.start()
    return sup, await backend.next()


async def audit(redis: Redis, event: str, count: int) -> list[dict[bytes, bytes]]:
    """The first `count` audit entries of `event`, waiting for them: the supervisor
    writes its audit from a queue, after the state change a test sees."""
    found: list[dict[bytes, bytes]] = []
    last = "0"
    async with asyncio.timeout(10):
        while len(found) < count:
            for _, entries in await redis.xread({keys.AUDIT: last}, block=1000):
                for entry_id, fields in entries:
                    last = entry_id
                    if fields[b"event"] == event.encode():
                        found.append(fields)
    return found[:count]


async def settled(sup: Supervisor, *states: State) -> None:
    """Until the child is in one of `states` (the runner moves on its own schedule)."""
    await asyncio.wait_for(sup.children["transcriber-0"].reach(*states), 10)


@pytest.mark.parametrize(
    ("restart", "code", "restarted"),
    [
        (Restart.PERMANENT, 0, True),
        (Restart.PERMANENT, -9, True),
        (Restart.TRANSIENT, 0, False),
        (Restart.TRANSIENT, 3, True),
        (Restart.TEMPORARY, -9, False),
    ],
)
async def test_restart_type_decides_whether_an_exit_is_restarted(
    make: list[Supervisor], settings: Settings, backend: FakeBackend,
    restart: Restart, code: int, restarted: bool,
) -> None:  # fmt: skip
    sup, first = await started(make, settings, backend, spec(restart))
    first.crash(code)
    if restarted:
        second = await backend.next()
        assert second.pid != first.pid
        await settled(sup, State.RUNNING)
        assert sup.children["transcriber-0"].restarts == 1
    else:
        await settled(sup, State.EXITED)
        assert backend.spawned.empty()
        assert sup.status()["healthy"] is False


async def test_first_restart_is_immediate_then_backoff_doubles_with_jitter(
    make: list[Supervisor], settings: Settings, backend: FakeBackend, redis: Redis
) -> None:
    _, handle = await started(make, settings, backend, spec())
    for _ in range(3):
        handle.crash()
        handle = await backend.next()
    delays = [float(e[b"delay_s"]) for e in await audit(redis, "actor_restart", 3)]
    assert delays[0] == 0.0
    assert 0.01 <= delays[1] <= 0.02  # backoff_min, jittered into [50 %, 100 %]
    assert 0.02 <= delays[2] <= 0.04  # doubled


async def test_more_restarts_than_the_intensity_allows_make_the_child_fatal(
    make: list[Supervisor], settings: Settings, backend: FakeBackend, redis: Redis
) -> None:
    sup, handle = await started(make, settings, backend, spec())
    for _ in range(settings.restart_intensity):
        handle.crash()
        handle = await backend.next()
    handle.crash()  # one more within the period
    await settled(sup, State.FATAL)
    assert backend.spawned.empty()
    report = sup.status()
    assert (report["state"], report["healthy"]) == ("FATAL", False)
    assert report["actors"][0]["restarts"] == settings.restart_intensity
    fatal = await audit(redis, "actor_fatal", 1)
    assert fatal[0][b"child"] == b"transcriber-0"


async def test_restarts_outside_the_period_do_not_count_toward_fatal(
    make: list[Supervisor], settings: Settings, backend: FakeBackend
) -> None:
    # Intensity 2: the first two crashes may come within the millisecond (the first
    # restart is immediate); from then on the backoff spaces them wider than the window.
    settings = replace(settings, restart_intensity=2, restart_period=0.001)
    sup, handle = await started(make, settings, backend, spec())
    for _ in range(4):
        handle.crash()
        handle = await backend.next()
    await settled(sup, State.RUNNING)
    assert sup.children["transcriber-0"].restarts == 4


async def test_child_that_dies_before_it_is_ready_fails_the_start(
    make: list[Supervisor], settings: Settings, backend: FakeBackend
) -> None:
    backend.ready_at_once = False
    assert settings.redis_url is not None
    sup = Supervisor(settings, backend, [spec()], settings.redis_url)
    make.append(sup)
    starting = asyncio.create_task(sup.start())
    handle = await backend.next()
    handle.crash(1)
    with pytest.raises(StartupError, match="transcriber-0 did not start: exit 1"):
        await starting
    assert sup.children["transcriber-0"].state == State.FATAL
    assert backend.spawned.empty()


async def test_stop_terminates_with_sigterm_and_nothing_is_restarted(
    make: list[Supervisor], settings: Settings, backend: FakeBackend
) -> None:
    sup, handle = await started(make, settings, backend, spec())
    await sup.stop()
    assert handle.signals == [signal.SIGTERM]
    assert sup.children["transcriber-0"].state == State.STOPPED
    assert backend.spawned.empty()


def transcriber(name: str) -> ChildSpec:
    return ChildSpec(name=name, role="transcriber", argv=("x",), restart=Restart.PERMANENT)


async def test_a_scale_up_whose_new_transcriber_cannot_start_leaves_the_pool_as_it_was(
    make: list[Supervisor], settings: Settings, backend: FakeBackend
) -> None:
    # The API answered such a scale with HTTP 500, and left a FATAL child in the tree.
    assert settings.redis_url is not None
    sup = Supervisor(settings, backend, [spec()], settings.redis_url, transcriber)
    make.append(sup)
    await sup.start()
    await backend.next()
    backend.ready_at_once = False
    scaling = asyncio.create_task(sup.scale("transcriber", 2))
    for _ in range(settings.restart_intensity + 1):  # it dies before it is ready, each time
        (await backend.next()).crash(1)
    with pytest.raises(OperationError, match="transcriber-1 did not start: exit 1; still 1"):
        await scaling
    assert list(sup.children) == ["transcriber-0"]
    assert sup.status()["healthy"] is True


async def two_transcribers(
    make: list[Supervisor], settings: Settings, backend: FakeBackend
) -> tuple[Supervisor, dict[str, FakeHandle]]:
    """A started supervisor of transcriber-0 and -1 that scales; their handles by name."""
    assert settings.redis_url is not None
    sup = Supervisor(settings, backend, [spec(), transcriber("transcriber-1")],
                     settings.redis_url, transcriber)  # fmt: skip
    make.append(sup)
    await sup.start()
    return sup, {h.spec.name: h for h in [await backend.next(), await backend.next()]}


async def test_a_scale_down_stops_a_transcriber_waiting_out_its_restart_backoff(
    make: list[Supervisor], settings: Settings, backend: FakeBackend
) -> None:
    # It waited for the backoff to end, then for the exit of the incarnation it started.
    settings = replace(settings, backoff_min=60.0, backoff_max=60.0)
    sup, handles = await two_transcribers(make, settings, backend)
    handles["transcriber-1"].crash()
    (await backend.next()).crash()  # the first restart is at once, the second waits
    await asyncio.wait_for(sup.children["transcriber-1"].reach(State.BACKOFF), 10)
    assert await asyncio.wait_for(sup.scale("transcriber", 1), 10) == ["transcriber-0"]
    assert backend.spawned.empty()


async def test_status_shows_a_transcribers_sessions_lag_busy_cost_and_hurried_from_its_beat(
    make: list[Supervisor], settings: Settings, backend: FakeBackend, redis: Redis
) -> None:
    sup, handle = await started(make, settings, backend, spec())
    now = time.time()
    beat = Heartbeat(name="transcriber-0", pid=handle.pid, role="transcriber", state="running",
                     load=3, version="test", ts=now, started_at=now, instance=handle.instance,
                     lag_ms=1234, busy=0.625, cost=0.21, hurried=0.25)  # fmt: skip
    await redis.set(keys.actor("transcriber-0"), beat.encode())
    await check(sup)  # one round of the heartbeat monitor
    row = next(a for a in sup.status()["actors"] if a["name"] == "transcriber-0")
    assert (row["sessions"], row["lag_ms"], row["busy"], row["cost"], row["hurried"]) == (
        3, 1234, 0.625, 0.21, 0.25)  # fmt: skip
    header, line = format_rows([row]).splitlines()
    assert line[header.index("LAG MS") :].split() == ["1234", "0.625", "0.21", "0.25"]
    scraped = (await metrics.render(sup)).decode()
    assert 'hark_transcriber_lag_seconds{actor="transcriber-0"} 1.234' in scraped
    assert 'hark_transcriber_finals_hurried_ratio{actor="transcriber-0"} 0.25' in scraped


async def _fatal(sup: Supervisor, backend: FakeBackend, handle: FakeHandle, name: str) -> None:
    """Crash `name` (whose incarnation is `handle`) until it is FATAL."""
    for _ in range(sup.settings.restart_intensity):
        handle.crash()
        handle = await backend.next()
    handle.crash()
    await asyncio.wait_for(sup.children[name].reach(State.FATAL), 10)


async def test_an_operators_restart_brings_a_fatal_actor_back(
    make: list[Supervisor], settings: Settings, backend: FakeBackend
) -> None:
    # It answered 409 "is FATAL": nothing but restarting the whole tree brought it back.
    sup, handle = await started(make, settings, backend, spec())
    await _fatal(sup, backend, handle, "transcriber-0")
    await sup.restart("transcriber-0")
    await backend.next()
    child = sup.children["transcriber-0"]
    assert child.state == State.RUNNING and child.restart_times == []
    assert sup.status()["healthy"] is True


async def test_scale_counts_live_transcribers_and_never_leaves_fewer_than_asked(
    make: list[Supervisor], settings: Settings, backend: FakeBackend
) -> None:
    # Both FATAL, scale to 1: it kept the FATAL transcriber-0, stopped transcriber-1 and
    # left none live, answering 200.
    sup, handles = await two_transcribers(make, settings, backend)
    for name, handle in handles.items():
        await _fatal(sup, backend, handle, name)
    assert await sup.scale("transcriber", 1) == ["transcriber-0"]
    await backend.next()
    assert sup.children["transcriber-0"].state == State.RUNNING
    assert sup.status()["healthy"] is True
    # One live, one FATAL again beside it, scale to 2: the FATAL one comes back.
    sup2_names = await sup.scale("transcriber", 2)
    assert sup2_names == ["transcriber-0", "transcriber-1"]
    assert all(c.state == State.RUNNING for c in sup.children.values())


def test_the_table_sorts_by_kind_and_number_and_shows_a_drain() -> None:
    rows = [
        {"name": "gateway", "role": "gateway", "state": "RUNNING"},
        {"name": "transcriber-1", "role": "transcriber", "state": "RUNNING", "draining": True},
    ]
    table = format_rows(rows).splitlines()
    assert table[2].split()[:2] == ["transcriber-1", "DRAINING"]
    assert table[1].split()[:2] == ["gateway", "RUNNING"]  # rows in the order given


async def test_status_lists_a_scaled_transcriber_before_the_gateway(
    make: list[Supervisor], settings: Settings, backend: FakeBackend
) -> None:
    assert settings.redis_url is not None
    gateway = ChildSpec(name="gateway", role="gateway", argv=("x",))
    sup = Supervisor(settings, backend, [spec(), gateway], settings.redis_url, transcriber)
    make.append(sup)
    await sup.start()
    for _ in range(2):
        await backend.next()
    await sup.scale("transcriber", 3)
    names = [r["name"] for r in sup.status()["actors"]]
    assert names == ["transcriber-0", "transcriber-1", "transcriber-2", "gateway"]
