"""The docker backend: each child is a container, through the Docker Engine API (aiodocker).

This is what the compose deployment runs: the supervisor sits in a container with
the Docker socket mounted and starts the gateway and the transcribers as
containers of the same image (so a child's argv, `python -m services...` with the
image's Python, is the same as under the process backend). A child's container is
named `hark-<name>` and labelled with its actor name, role and incarnation.

- Readiness: the actor prints READY_LINE on stdout (HARK_NOTIFY=stdout) and the
  backend follows the container's log until it appears.
- Exit: `POST /containers/{id}/wait`. A container whose main process died of
  signal N exits with 128+N, as in a shell; that is reported as killed by N.
- Signals: `POST /containers/{id}/kill?signal=...`. Containers run with an init
  (`HostConfig.Init`), which passes signals on to the actor and reaps orphans.
- A restart is a new container: the last one of that name, kept until then for
  `docker logs`, is removed first; `close()` removes the ones still there.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import Coroutine
from typing import Any

import aiodocker
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from services.supervisor.backends import SpawnError
from services.supervisor.child import ChildSpec
from shared.actor import INSTANCE_ENV, NOTIFY_ENV, READY_LINE
from shared.config import Settings
from shared.tasks import log_failure

log = logging.getLogger(__name__)

NAME_PREFIX = "hark-"
LABEL = "org.hark"  # label prefix: org.hark.actor, org.hark.role, org.hark.instance


class DockerHandle:
    """One container of a child."""

    def __init__(
        self, backend: DockerBackend, container: DockerContainer, pid: int | None, instance: str
    ) -> None:
        self._backend = backend
        self._container = container
        self._pid = pid
        self.instance = instance

    @property
    def pid(self) -> int | None:
        return self._pid  # the host's pid of the container's first process

    async def wait(self) -> int:
        try:
            reply = await self._container.wait()
        except DockerError as exc:  # removed behind our back: gone all the same
            log.warning("waiting for container %s: %s", self._container.id[:12], exc.message)
            return -signal.SIGKILL
        return returncode(int(reply.get("StatusCode", 1)))

    async def wait_ready(self) -> bool:
        pending = ""
        try:
            async for text in self._container.log(stdout=True, follow=True):
                pending += text
                *lines, pending = pending.split("\n")
                if any(line.strip() == READY_LINE for line in lines):
                    return True
        except DockerError as exc:
            log.warning("reading the log of %s: %s", self._container.id[:12], exc.message)
        return False

    def signal(self, signum: int) -> None:
        self._backend.run_soon(self._kill(signum), f"kill-{self._container.id[:12]}")

    async def _kill(self, signum: int) -> None:
        try:
            await self._container.kill(signal=signal.Signals(signum).name)
        except DockerError as exc:
            if exc.status not in (404, 409):  # 409: not running any more
                raise


class DockerBackend:
    """Spawns children as containers of `settings.docker_image`."""

    def __init__(self, settings: Settings, docker: aiodocker.Docker | None = None) -> None:
        self.settings = settings
        try:
            self._docker = docker or aiodocker.Docker(url=settings.docker_url)
        except ValueError as exc:  # aiodocker found no engine to talk to
            raise SpawnError(f"no Docker Engine API: {exc}; set HARK_DOCKER_URL") from None
        self._names: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def spawn(self, spec: ChildSpec) -> DockerHandle:
        if spec.stdin is not None:  # the embedded Redis: the docker backend needs another
            raise SpawnError(f"{spec.name}: the docker backend gives a child no stdin")
        name = NAME_PREFIX + spec.name
        instance = secrets.token_hex(8)
        try:
            await self._remove(name)
            container = await self._docker.containers.create(self.config(spec, instance), name=name)
            self._names.add(name)
            await container.start()
            info = await container.show()
        except DockerError as exc:
            raise SpawnError(f"docker: {exc.message}") from None
        except OSError as exc:  # the API's socket
            raise SpawnError(f"Docker Engine API unreachable: {exc}") from None
        pid = info.get("State", {}).get("Pid") or None
        log.info("%s: container %s (%s)", spec.name, name, container.id[:12])
        return DockerHandle(self, container, pid, instance)

    def config(self, spec: ChildSpec, instance: str) -> dict[str, Any]:
        """The container's create body (Engine API `ContainerCreateRequest`)."""
        env = {**spec.env, "PYTHONUNBUFFERED": "1", NOTIFY_ENV: "stdout", INSTANCE_ENV: instance}
        host: dict[str, object] = {"Init": True}
        if self.settings.docker_network:
            host["NetworkMode"] = self.settings.docker_network
        config: dict[str, Any] = {
            "Image": self.settings.docker_image,
            # The child's whole argv: the image's ENTRYPOINT (["hark"]) would otherwise
            # stay in front of it (hark: invalid choice: '/opt/hark/bin/python').
            "Entrypoint": list(spec.argv[:1]),
            "Cmd": list(spec.argv[1:]),
            "Env": [f"{key}={value}" for key, value in sorted(env.items())],
            "Labels": {
                f"{LABEL}.actor": spec.name,
                f"{LABEL}.role": spec.role,
                f"{LABEL}.instance": instance,
            },
            "Tty": False,
            "HostConfig": host,
        }
        if spec.role == "gateway":  # the one child clients reach from outside
            ports = [p for p in (self.settings.port, self.settings.vosk_port) if p]
            config["ExposedPorts"] = {f"{p}/tcp": {} for p in ports}
            host["PortBindings"] = {
                f"{p}/tcp": [{"HostIp": self.settings.docker_publish_host, "HostPort": str(p)}]
                for p in ports
            }
        return config

    def run_soon(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run an API call in the background (Handle.signal is not async); log failures."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(log_failure)

    async def _remove(self, name: str) -> None:
        try:
            await self._docker.containers.container(name).delete(force=True)
        except DockerError as exc:
            if exc.status != 404:
                raise

    async def remove(self, name: str) -> None:
        """Remove the stopped container of a child scaled away (one that stays is only
        replaced when the same name starts again, or removed at the supervisor's stop)."""
        container = NAME_PREFIX + name
        try:
            await self._remove(container)
        except (DockerError, OSError) as exc:
            log.warning("could not remove container %s: %s", container, exc)
        self._names.discard(container)

    async def close(self) -> None:
        """Remove the containers this backend made, and close the API session."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for name in sorted(self._names):
            try:
                await self._remove(name)
            except (DockerError, OSError) as exc:
                log.warning("could not remove container %s: %s", name, exc)
        await self._docker.close()


def returncode(status: int) -> int:
    """A container's exit status as a process return code: 128+N is death by signal N."""
    if 128 < status <= 128 + 64:
        return -(status - 128)
    return status
