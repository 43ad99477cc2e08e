"""A stub Docker Engine API, served by aiohttp on a unix socket, for the docker backend.

It answers the endpoints the backend uses with the shapes of the Engine API
reference (v1.43): `/version`, `containers/create|start|wait|kill|json|logs` and
`DELETE /containers/{id}`, with the Engine's status codes (201, 204, 304, 404, 409)
and `{"message": ...}` errors. A "container" is a local process running the
container's `Entrypoint` and `Cmd` with its `Env`, as the Engine runs them: the
image's ENTRYPOINT (hark's image: `["hark"]`) stays in front of `Cmd` unless the create
body names an `Entrypoint`. So the actors it runs are real: they talk to
the test's Redis and serve clients. Its stdout is kept and served by `logs` in the
Engine's multiplexed stream format (8-byte frame headers); its stderr goes to
`<log_dir>/<name>.log`. A main process killed by signal N exits 128+N, as under
Docker. Every request is recorded, so a test can check what the backend asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

API_VERSION = "1.43"


@dataclass
class Container:
    id: str
    name: str
    config: dict[str, Any]
    created: float = field(default_factory=time.time)
    proc: asyncio.subprocess.Process | None = None
    exit_code: int | None = None
    stdout: bytearray = field(default_factory=bytearray)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    reader: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.exit_code is None

    def inspect(self) -> dict[str, Any]:
        status = "running" if self.running else ("exited" if self.proc else "created")
        return {
            "Id": self.id,
            "Name": "/" + self.name,
            "Created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
            "State": {
                "Status": status,
                "Running": self.running,
                "Pid": self.proc.pid if self.running and self.proc else 0,
                "ExitCode": self.exit_code or 0,
            },
            "Config": {
                "Tty": bool(self.config.get("Tty", False)),
                "Image": self.config.get("Image"),
                "Cmd": self.config.get("Cmd"),
                "Env": self.config.get("Env", []),
                "Labels": self.config.get("Labels", {}),
            },
            "HostConfig": self.config.get("HostConfig", {}),
        }


class StubEngine:
    """`StubEngine(socket_path, log_dir, images)`, `images` mapping each image name to
    its ENTRYPOINT; `start()`, `stop()`."""

    def __init__(self, socket_path: Path, log_dir: Path, images: dict[str, list[str]]) -> None:
        self.socket_path = socket_path
        self.log_dir = log_dir
        self.images = images
        self.containers: dict[str, Container] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._record])
        app.router.add_get("/version", self._version)
        prefix = f"/v{API_VERSION}"
        app.router.add_post(f"{prefix}/containers/create", self._create)
        app.router.add_get(f"{prefix}/containers/json", self._list)
        app.router.add_post(f"{prefix}/containers/{{id}}/start", self._start)
        app.router.add_post(f"{prefix}/containers/{{id}}/wait", self._wait)
        app.router.add_post(f"{prefix}/containers/{{id}}/kill", self._kill)
        app.router.add_get(f"{prefix}/containers/{{id}}/json", self._inspect)
        app.router.add_get(f"{prefix}/containers/{{id}}/logs", self._logs)
        app.router.add_delete(f"{prefix}/containers/{{id}}", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.UnixSite(self._runner, str(self.socket_path)).start()

    async def stop(self) -> None:
        for container in list(self.containers.values()):
            await self._end(container)
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what tests look at ------------------------------------------------------------

    def by_name(self, name: str) -> Container | None:
        return next((c for c in self.containers.values() if c.name == name), None)

    def calls(self, method: str, path_part: str) -> list[Any]:
        return [body for m, p, body in self.requests if m == method and path_part in p]

    async def crash(self, name: str, signum: int = signal.SIGKILL) -> int:
        """Kill a container's process from outside (as the OOM killer would); its pid."""
        container = self.by_name(name)
        assert container is not None and container.proc is not None and container.running
        container.proc.send_signal(signum)
        return container.proc.pid

    # -- the API -----------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else dict(request.query)
        self.requests.append((request.method, request.path, body))
        try:
            response: web.StreamResponse = await handler(request)
        except EngineError as exc:
            # As the engine: `application/json` with no charset (aiodocker parses only that).
            payload = json.dumps({"message": exc.message}).encode()
            return web.Response(status=exc.status, body=payload, content_type="application/json")
        return response

    def _find(self, request: web.Request) -> Container:
        key = request.match_info["id"]
        found = self.containers.get(key) or self.by_name(key)
        if found is None:
            raise EngineError(404, f"No such container: {key}")
        return found

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"ApiVersion": API_VERSION, "MinAPIVersion": "1.12",
                                  "Version": "24.0.7", "Os": "linux", "Arch": "amd64"})  # fmt: skip

    async def _create(self, request: web.Request) -> web.Response:
        config = await request.json()
        name = request.query.get("name") or secrets.token_hex(6)
        existing = self.by_name(name)
        if existing is not None:
            raise EngineError(409, f'Conflict. The container name "/{name}" is already '
                              f'in use by container "{existing.id}". You have to remove (or '
                              "rename) that container to be able to reuse that name.")  # fmt: skip
        if config.get("Image") not in self.images:
            raise EngineError(404, f"No such image: {config.get('Image')}")
        container = Container(id=secrets.token_hex(32), name=name, config=config)
        self.containers[container.id] = container
        return web.json_response({"Id": container.id, "Warnings": []}, status=201)

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response([
            {"Id": c.id, "Names": ["/" + c.name], "Image": c.config.get("Image"),
             "State": c.inspect()["State"]["Status"], "Labels": c.config.get("Labels", {})}
            for c in self.containers.values() if c.running or request.query.get("all")
        ])  # fmt: skip

    async def _start(self, request: web.Request) -> web.Response:
        container = self._find(request)
        if container.running:
            return web.Response(status=304)
        env = dict(item.split("=", 1) for item in container.config.get("Env", []))
        env.setdefault("PATH", os.environ.get("PATH", "/usr/bin:/bin"))
        # As the Engine: an Entrypoint in the create body replaces the image's.
        entrypoint = container.config.get("Entrypoint") or self.images[container.config["Image"]]
        argv = [*entrypoint, *(container.config.get("Cmd") or [])]
        with (self.log_dir / f"{container.name}.log").open("ab") as log:
            container.proc = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=asyncio.subprocess.PIPE,
                stderr=log, stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        container.exit_code = None
        container.reader = asyncio.create_task(self._read(container))
        return web.Response(status=204)

    async def _read(self, container: Container) -> None:
        assert container.proc is not None and container.proc.stdout is not None
        while chunk := await container.proc.stdout.read(65536):
            async with container.changed:
                container.stdout += chunk
                container.changed.notify_all()
        code = await container.proc.wait()
        async with container.changed:
            container.exit_code = 128 - code if code < 0 else code
            container.changed.notify_all()

    async def _wait(self, request: web.Request) -> web.Response:
        container = self._find(request)
        async with container.changed:
            await container.changed.wait_for(lambda: not container.running)
        return web.json_response({"StatusCode": container.exit_code or 0, "Error": None})

    async def _kill(self, request: web.Request) -> web.Response:
        container = self._find(request)
        if not container.running or container.proc is None:
            raise EngineError(409, f"Container {container.id} is not running")
        name = request.query.get("signal", "SIGKILL")
        container.proc.send_signal(signal.Signals[name if name.startswith("SIG") else "SIG" + name])
        return web.Response(status=204)

    async def _inspect(self, request: web.Request) -> web.Response:
        return web.json_response(self._find(request).inspect())

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        container = self._find(request)
        follow = request.query.get("follow") in ("1", "true", "True")
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.docker.raw-stream"})
        await resp.prepare(request)
        if request.query.get("stdout") not in ("1", "true", "True"):
            return resp  # stderr goes to the log file, not here
        sent = 0
        while True:
            async with container.changed:
                if follow:
                    await container.changed.wait_for(
                        lambda n=sent: len(container.stdout) > n or not container.running  # type: ignore[misc]
                    )
                data = bytes(container.stdout[sent:])
                finished = not container.running
            if data:
                await resp.write(struct.pack(">BxxxL", 1, len(data)) + data)
                sent += len(data)
            if not follow or (finished and sent == len(container.stdout)):
                break
        await resp.write_eof()
        return resp

    async def _delete(self, request: web.Request) -> web.Response:
        container = self._find(request)
        if container.running and request.query.get("force") not in ("1", "true", "True"):
            raise EngineError(409, f"You cannot remove a running container "
                              f"{container.id}. Stop the container before attempting removal "
                              "or force remove")  # fmt: skip
        await self._end(container)
        del self.containers[container.id]
        return web.Response(status=204)

    async def _end(self, container: Container) -> None:
        if container.running and container.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                container.proc.kill()
        if container.reader is not None:
            await container.reader


class EngineError(Exception):
    """An Engine API error: its HTTP status and `{"message": ...}`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
