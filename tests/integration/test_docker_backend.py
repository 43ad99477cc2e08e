"""The supervisor's docker backend against a stub Docker Engine API (tests/docker_engine.py).

No Docker engine runs here, so the stub plays one on a unix socket, with the
Engine API's shapes; its "containers" are local processes, so the actors are real
and the tree serves a client end to end.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiodocker
import aiohttp
import psutil
import pytest
from aiodocker.exceptions import DockerError

from services.supervisor.backends.docker import DockerBackend, returncode
from services.supervisor.child import State
from services.supervisor.monitor import check
from services.supervisor.supervisor import StartupError, Supervisor
from services.supervisor.tree import actor_env, actor_specs, free_port, transcriber_spec
from shared.config import Settings
from tests.docker_engine import StubEngine
from tests.tree import count, replies_until

pytestmark = pytest.mark.timeout(90)

IMAGE = "hark:test"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[StubEngine]:
    # A short path: a unix socket's path is limited to about 100 bytes.
    # hark's image: ENTRYPOINT ["hark"], the command in front of whatever Cmd it gets.
    hark = str(Path(sys.executable).parent / "hark")
    stub = StubEngine(tmp_path / "docker.sock", tmp_path, images={IMAGE: [hark]})
    await stub.start()
    yield stub
    await stub.stop()


def _settings(engine: StubEngine, redis_url: str, image: str = IMAGE) -> Settings:
    return Settings(backend="docker", docker_url=engine.url, docker_image=image,
                    docker_network="hark", redis_url=redis_url, engine="mock",
                    heartbeat_interval=0.5, port=free_port(), transcribers=2)  # fmt: skip


def _supervisor(settings: Settings) -> Supervisor:
    assert settings.redis_url is not None
    specs = actor_specs(settings, settings.redis_url)
    new = functools.partial(transcriber_spec, actor_env(settings, settings.redis_url))
    return Supervisor(settings, DockerBackend(settings), specs, settings.redis_url, new)


@pytest.fixture
async def tree(engine: StubEngine, redis_url: str) -> AsyncIterator[Supervisor]:
    supervisor = _supervisor(_settings(engine, redis_url))
    try:
        await supervisor.start()
        yield supervisor
    finally:
        await supervisor.stop()
        for name in ("gateway", "transcriber-0", "transcriber-1"):
            print(f"--- {name} ---\n{(engine.log_dir / f'hark-{name}.log').read_text()[-2000:]}")


async def test_the_tree_runs_as_containers_created_with_the_engine_api(
    tree: Supervisor, engine: StubEngine
) -> None:
    report = tree.status()
    assert report["state"] == "OK" and report["backend"] == "docker"
    names = sorted(c.name for c in engine.containers.values() if c.running)
    assert names == ["hark-gateway", "hark-transcriber-0", "hark-transcriber-1"]
    for row in report["actors"]:
        container = engine.by_name(f"hark-{row['name']}")
        assert container is not None and container.proc is not None
        assert row["pid"] == container.proc.pid  # the pid the engine reports
    created = engine.by_name("hark-transcriber-0")
    assert created is not None
    config = created.config
    assert config["Image"] == IMAGE and config["HostConfig"]["Init"] is True
    assert config["HostConfig"]["NetworkMode"] == "hark"
    assert config["Labels"]["org.hark.actor"] == "transcriber-0"
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["HARK_NOTIFY"] == "stdout" and env["HARK_INSTANCE"] == config["Labels"][
        "org.hark.instance"]  # fmt: skip
    gateway = engine.by_name("hark-gateway")
    assert gateway is not None
    port = f"{tree.settings.port}/tcp"
    assert gateway.config["HostConfig"]["PortBindings"][port] == [
        {"HostIp": "127.0.0.1", "HostPort": str(tree.settings.port)}
    ]
    # And it works: a client streams through the gateway container to a transcriber one.
    url = f"ws://127.0.0.1:{tree.settings.port}/ws"
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        await ws.receive_json(timeout=10)
        for _ in range(3):
            await ws.send_bytes(b"\x00" * 320)
        replies = await replies_until(ws, lambda r: count(r, "transcript") == 3)
    assert count(replies, "received") == 3
    # The heartbeats are matched by the instance token (a pid inside a container says
    # nothing): one round of the monitor reads every actor's load from its beat.
    await check(tree)
    for child in tree.children.values():
        assert child.instance and child.load is not None, child.name


async def test_a_crashed_container_is_reported_and_replaced_by_a_new_one(
    tree: Supervisor, engine: StubEngine
) -> None:
    old = engine.by_name("hark-transcriber-1")
    assert old is not None
    child = tree.children["transcriber-1"]
    await engine.crash("hark-transcriber-1", signal.SIGKILL)
    await child.reach(State.BACKOFF, State.STARTING)
    await child.reach(State.RUNNING)
    assert child.last_exit == "killed by SIGKILL"  # the engine said 137
    assert child.restarts == 1
    new = engine.by_name("hark-transcriber-1")
    assert new is not None and new.id != old.id and new.running
    assert old.id not in engine.containers  # the dead one was removed first
    assert tree.status()["state"] == "OK"


async def test_scaling_creates_and_removes_transcriber_containers(
    tree: Supervisor, engine: StubEngine
) -> None:
    assert await tree.scale("transcriber", 3) == ["transcriber-0", "transcriber-1",
                                                  "transcriber-2"]  # fmt: skip
    assert tree.children["transcriber-2"].state == State.RUNNING
    added = engine.by_name("hark-transcriber-2")
    assert added is not None and added.running
    stopped = engine.by_name("hark-transcriber-1")
    assert await tree.scale("transcriber", 1) == ["transcriber-0"]
    assert {c.name for c in engine.containers.values() if c.running} == {
        "hark-gateway", "hark-transcriber-0"
    }  # fmt: skip
    # Stopped cleanly (SIGTERM) and removed at once, not left until the supervisor stops.
    assert stopped is not None and stopped.exit_code == 0
    assert engine.by_name("hark-transcriber-1") is None
    assert engine.by_name("hark-transcriber-2") is None
    assert [r["name"] for r in tree.status()["actors"]] == ["transcriber-0", "gateway"]
    assert tree.status()["state"] == "OK"


async def test_stop_removes_every_container(engine: StubEngine, redis_url: str) -> None:
    supervisor = _supervisor(_settings(engine, redis_url))
    await supervisor.start()
    pids = [c.proc.pid for c in engine.containers.values() if c.proc is not None]
    await supervisor.stop()
    assert engine.containers == {}
    assert engine.calls("DELETE", "/containers/hark-gateway")
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def test_a_missing_image_stops_start_up_with_the_engines_reason(
    engine: StubEngine, redis_url: str
) -> None:
    supervisor = _supervisor(_settings(engine, redis_url, image="hark:missing"))
    try:
        with pytest.raises(StartupError, match="No such image: hark:missing"):
            await asyncio.wait_for(supervisor.start(), 30)
    finally:
        await supervisor.stop()


def test_a_container_killed_by_a_signal_exits_128_plus_its_number() -> None:
    assert returncode(137) == -signal.SIGKILL
    assert returncode(143) == -signal.SIGTERM
    assert (returncode(0), returncode(1), returncode(255)) == (0, 1, 255)


async def test_the_stub_answers_errors_as_the_engine_does(engine: StubEngine) -> None:
    docker = aiodocker.Docker(url=engine.url)
    try:
        config = {"Image": IMAGE, "Cmd": ["true"]}
        await docker.containers.create(config, name="twice")
        with pytest.raises(DockerError) as conflict:
            await docker.containers.create(config, name="twice")
        assert conflict.value.status == 409
        assert 'The container name "/twice" is already in use' in conflict.value.message
        with pytest.raises(DockerError) as missing:
            await docker.containers.container("nobody").delete(force=True)
        assert (missing.value.status, missing.value.message) == (404, "No such container: nobody")
    finally:
        await docker.close()
