"""The `hark` command: `hark up` runs the tree, `hark status` reports on it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import web
from dotenv import load_dotenv

from services.supervisor.api import create_status_app
from services.supervisor.backends import Backend, SpawnError
from services.supervisor.backends.process import ProcessBackend
from services.supervisor.commands import audit, duration, operate, status, watch
from services.supervisor.supervisor import START_ORDER, StartupError, Supervisor
from services.supervisor.tree import (
    REDIS_LOG,
    RedisNotFound,
    actor_env,
    actor_specs,
    embedded_redis,
    transcriber_spec,
)
from shared import actor, logs
from shared.auth import ApiKeys, admin_token_dir, admin_token_path, read_admin_token
from shared.config import BACKENDS, ENGINES, LOG_FORMATS, Settings, SettingsError, redact_url

log = logging.getLogger("services.supervisor")

# CLI flag -> Settings field, for the flags of `hark up` that override the environment.
UP_FLAGS = {
    "host": "host", "port": "port", "vosk_port": "vosk_port", "status_host": "status_host",
    "status_port": "status_port", "transcribers": "transcribers", "engine": "engine",
    "redis_url": "redis_url", "log_level": "log_level", "log_format": "log_format",
    "backend": "backend",
}  # fmt: skip


def _env_name(field_name: str) -> str:
    """The HARK_* variable of a Settings field."""
    found = next(f for f in dataclasses.fields(Settings) if f.name == field_name)
    return str(found.metadata["env"].name)


def _url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="supervisor API (default http://HARK_STATUS_HOST:"
                        "HARK_STATUS_PORT)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hark", description="hark: a streaming speech-to-text gateway."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up",
        help="run the whole tree: redis (embedded), gateway, transcribers",
        description="Start the supervisor and its tree. Flags override HARK_* variables. "
        "Ctrl-C (or SIGTERM) stops the tree: gateway, transcribers, then redis.",
    )
    up.add_argument("--host", help="gateway address (HARK_HOST, default 127.0.0.1)")
    up.add_argument("--port", type=int, help="gateway port (HARK_PORT, default 8000)")
    up.add_argument("--vosk-port", type=int, help="also speak the vosk-server protocol on "
                    "every path of this port (HARK_VOSK_PORT; vosk clients use 2700)")  # fmt: skip
    up.add_argument("--status-host", help="supervisor API address (HARK_STATUS_HOST, "
                    "default 127.0.0.1)")  # fmt: skip
    up.add_argument("--status-port", type=int,
                    help="supervisor API port (HARK_STATUS_PORT, default 8001)")  # fmt: skip
    up.add_argument("--transcribers", type=int, metavar="N",
                    help="transcriber actors (HARK_TRANSCRIBERS, default 2)")  # fmt: skip
    up.add_argument("--engine", choices=ENGINES, help="engine (HARK_ENGINE, default whisper; "
                    "mock for load tests)")  # fmt: skip
    up.add_argument("--redis-url", help="use this Redis instead of starting an embedded one "
                    "(HARK_REDIS_URL; with a password, set that instead: a command line is "
                    "readable by every user)")  # fmt: skip
    up.add_argument("--backend", choices=BACKENDS, help="run the actors as local processes or "
                    "Docker containers (HARK_BACKEND, default process)")  # fmt: skip
    up.add_argument("--log-level", help="DEBUG, INFO, WARNING... (HARK_LOG_LEVEL, default INFO)")
    up.add_argument("--log-format", choices=LOG_FORMATS,
                    help="text or json lines (HARK_LOG_FORMAT, default text)")  # fmt: skip

    status = sub.add_parser(
        "status",
        help="one row per actor; exit 0 when all are RUNNING",
        description="Ask the supervisor for the state of the tree. Exit code: 0 all RUNNING, "
        "1 not healthy, 2 supervisor unreachable.",
    )
    status.add_argument("--json", action="store_true", help="print the JSON the API serves")
    status.add_argument("--watch", action="store_true",
                        help="refresh every second until Ctrl-C")  # fmt: skip
    _url_option(status)

    scale = sub.add_parser(
        "scale",
        help="run N transcribers: hark scale transcriber=N",
        description="Grow or shrink the transcriber pool of a running tree. Shrinking moves "
        "the sessions of the stopped transcribers, with their audio not yet transcribed, to "
        "the others. Sends HARK_ADMIN_TOKEN when set.",
    )
    scale.add_argument("target", metavar="transcriber=N")
    _url_option(scale)
    for verb, text in (("restart", "restart an actor gracefully (SIGTERM, then start it)"),
                       ("drain", "give a transcriber no new sessions (--off: undo)")):  # fmt: skip
        op = sub.add_parser(verb, help=text, description=f"{text[0].upper()}{text[1:]}. "
                            "Sends HARK_ADMIN_TOKEN when set.")  # fmt: skip
        op.add_argument("actor", help="actor name, as hark status shows it")
        if verb == "drain":
            op.add_argument("--off", action="store_true", help="take it back into rotation")
        _url_option(op)

    audit = sub.add_parser(
        "audit",
        help="print the audit log: sessions, transcripts, errors, crashes, restarts",
        description="Read the hark:audit stream through the supervisor's API.",
    )
    audit.add_argument("--session", help="only this session's entries")
    audit.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    audit.add_argument("-n", "--count", type=int, default=50, help="entries to show (default 50)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    _url_option(audit)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # An optional .env in the working directory; the environment wins over it. `hark up`
    # passes the result on to the actors.
    load_dotenv(Path.cwd() / ".env", override=False)
    overrides: dict[str, Any] = {}
    if args.command == "up":
        overrides = {
            field: getattr(args, flag) for flag, field in UP_FLAGS.items()
            if getattr(args, flag) is not None
        }  # fmt: skip
        if "log_level" in overrides:
            overrides["log_level"] = overrides["log_level"].upper()
    try:
        settings = Settings.from_env(overrides=overrides)
    except SettingsError as exc:
        message = str(exc)
        for flag, name in UP_FLAGS.items():  # name what the user typed: the flag, not the variable
            if name in overrides:
                message = message.replace(_env_name(name), "--" + flag.replace("_", "-"))
        sys.exit(f"hark: bad setting: {message}")
    if args.command == "up":
        sys.exit(up(settings, url_in_argv=args.redis_url is not None))
    base = args.url or f"http://{settings.status_host}:{settings.status_port}"
    token = settings.admin_token or read_admin_token(base)
    if args.command == "audit":
        sys.exit(audit(base, token, args.session, args.follow, args.count, args.json))
    if args.command in ("scale", "restart", "drain"):
        sys.exit(operate(base, token, args))
    if args.watch:
        sys.exit(watch(base))
    sys.exit(status(base, args.json))


# -- hark up ---------------------------------------------------------------------------


def up(settings: Settings, url_in_argv: bool = False) -> int:
    logs.setup(settings.log_level, "supervisor", settings.log_format)
    if url_in_argv and settings.redis_url and redact_url(settings.redis_url) != settings.redis_url:
        log.warning("the Redis password in --redis-url can be read by every user of this "
                    "machine (ps, /proc/PID/cmdline): pass the URL in HARK_REDIS_URL instead, "
                    "which only this user can read")  # fmt: skip
    try:
        keyring = ApiKeys.from_settings(settings)
    except SettingsError as exc:
        log.error("%s", exc)
        return 2
    if keyring is None:
        if _loopback_host(settings.host):
            log.warning("no API keys (HARK_API_KEYS): the gateway is open to anyone on this "
                        "machine; it listens on %s only", settings.host)  # fmt: skip
        else:
            log.warning("no API keys (HARK_API_KEYS) and HARK_HOST=%s: ANYONE who reaches "
                        "port %d can stream audio; set HARK_API_KEYS", settings.host,
                        settings.port)  # fmt: skip

    for left in clean_leftovers():
        log.info("removed %s, left by a supervisor that was killed", left)
    token_file = None
    if settings.admin_token is None:
        # The supervisor's changing endpoints always need a token: without one given,
        # it makes one up and leaves it where this user's `hark` commands look.
        made_up = secrets.token_urlsafe(24)
        settings = dataclasses.replace(settings, admin_token=made_up)
        token_file = admin_token_path(settings.status_port)
        token_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(made_up + "\n")
        _owner_file(token_file).write_text(f"{os.getpid()}\n")

    async def serve(stop: asyncio.Event) -> int:
        return await run_tree(settings, stop, token_file, keyring)

    try:
        # The supervisor's own stop waits for each child up to the shutdown timeout, in order.
        return actor.run(serve, grace=settings.shutdown_timeout * (len(START_ORDER) + 1))
    finally:
        if token_file is not None:
            token_file.unlink(missing_ok=True)
            _owner_file(token_file).unlink(missing_ok=True)


WORKDIR_PREFIX = "hark-"
OWNER_FILE = "supervisor.pid"


def _owner_file(token_file: Path) -> Path:
    return token_file.with_name(token_file.name + ".pid")


def _dead(pid_file: Path) -> bool:
    """Whether `pid_file` names a process that is gone (False when unreadable: not ours
    to judge, or written by a version that wrote none)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False


def clean_leftovers() -> list[Path]:
    """Remove what supervisors killed with SIGKILL left behind (their working folder,
    with the embedded Redis's socket, and the admin token file they made up): only
    this user's, and only where the owner's pid is gone. What was removed."""
    removed: list[Path] = []
    for folder in Path(tempfile.gettempdir()).glob(WORKDIR_PREFIX + "*"):
        try:
            mine = folder.is_dir() and folder.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and _dead(folder / OWNER_FILE):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    for owner in admin_token_dir().glob("admin-token-*.pid"):
        if _dead(owner):
            token = owner.with_name(owner.name.removesuffix(".pid"))
            token.unlink(missing_ok=True)
            owner.unlink(missing_ok=True)
            removed.append(token)
    return removed


async def run_tree(
    settings: Settings,
    stop: asyncio.Event,
    token_file: Path | None = None,
    keyring: ApiKeys | None = None,
) -> int:
    """Run the tree until `stop` is set; the exit code for `hark up`."""
    with tempfile.TemporaryDirectory(prefix=WORKDIR_PREFIX) as workdir:
        # Who owns it: a later `hark up` removes it if this process dies without cleaning.
        (Path(workdir) / OWNER_FILE).write_text(f"{os.getpid()}\n")
        specs = []
        if settings.redis_url is None:
            try:
                redis_spec, redis_url = embedded_redis(Path(workdir))
            except RedisNotFound as exc:
                log.error("%s", exc)
                return 1
            specs.append(redis_spec)
        else:
            redis_url = settings.redis_url
        specs += actor_specs(settings, redis_url)
        new_transcriber = functools.partial(transcriber_spec, actor_env(settings, redis_url))
        try:
            backend = make_backend(settings)
        except SpawnError as exc:
            log.error("%s", exc)
            return 1
        supervisor = Supervisor(settings, backend, specs, redis_url, new_transcriber)
        runner = web.AppRunner(create_status_app(supervisor), handle_signals=False)
        await runner.setup()
        try:
            try:
                await web.TCPSite(runner, settings.status_host, settings.status_port).start()
            except OSError as exc:
                log.error("cannot serve the status API on %s:%d: %s", settings.status_host,
                          settings.status_port, exc.strerror)  # fmt: skip
                log.error("choose another port with --status-port (HARK_STATUS_PORT)")
                return 1
            starting = asyncio.create_task(supervisor.start())
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([starting, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return 130
            stopped.cancel()
            try:
                starting.result()
            except StartupError as exc:
                log.error("hark could not start: %s", exc)
                redis_log = Path(workdir) / REDIS_LOG
                if settings.redis_url is None and redis_log.exists():
                    tail = redis_log.read_text(errors="replace").splitlines()[-20:]
                    log.error("the embedded Redis said:\n%s", "\n".join(tail))
                return 1
            _banner(settings, redis_url, token_file, keyring)
            if sys.stdout.isatty():
                await _live_line(supervisor, stop)
            else:
                await stop.wait()
            log.info("stopping the tree")
            return 0
        finally:
            await supervisor.stop()
            await runner.cleanup()


async def _live_line(supervisor: Supervisor, stop: asyncio.Event) -> None:
    """Until `stop`: one status line, redrawn in place every second (a terminal only)."""
    try:
        while not stop.is_set():
            sys.stdout.write(f"\r\033[K{status_line(supervisor.status())}")
            sys.stdout.flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
    finally:
        sys.stdout.write("\n")
        sys.stdout.flush()


def status_line(report: dict[str, Any]) -> str:
    """The tree in one line: `tree OK  transcribers 2/2  sessions 3  mailbox 0 ...`."""
    actors = report["actors"]
    transcribers = [a for a in actors if a["role"] == "transcriber"]
    running = sum(1 for a in transcribers if a["state"] == "RUNNING")
    gateway: dict[str, Any] = next((a for a in actors if a["role"] == "gateway"), {})
    trouble = [f"{a['name']} {a['state']}" for a in actors if a["state"] != "RUNNING"]
    parts = [
        f"tree {report['state']}",
        f"transcribers {running}/{len(transcribers)}",
        f"sessions {gateway.get('sessions') or 0}",
        f"mailbox {sum(a.get('mailbox') or 0 for a in transcribers)}",
        f"restarts {sum(a['restarts'] for a in actors)}",
        f"up {duration(report['uptime_s'])}",
    ]
    if not report["redis"]:
        parts.insert(1, "redis DOWN")
    return "  ".join(parts + trouble)


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "docker":
        from services.supervisor.backends.docker import DockerBackend

        return DockerBackend(settings)
    return ProcessBackend()


def _loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name, or 0.0.0.0-like wildcards are addresses and not loopback


def _banner(
    settings: Settings, redis_url: str, token_file: Path | None, keyring: ApiKeys | None
) -> None:
    where = "embedded, this machine only" if settings.redis_url is None else "external"
    access = ("OPEN: no API keys (set HARK_API_KEYS)" if keyring is None
              else f"API key or token required ({len(keyring)} key(s))")  # fmt: skip
    lines = [
        "hark is up",
        f"  web page   http://{settings.host}:{settings.port}/",
        f"  WebSocket  ws://{settings.host}:{settings.port}/ws"
        f"   (vosk protocol: ws://{settings.host}:{settings.vosk_port or settings.port}"
        f"{'' if settings.vosk_port else '/vosk'})",
        f"  dashboard  http://{settings.status_host}:{settings.status_port}/",
        f"  status     http://{settings.status_host}:{settings.status_port}/status   (hark status)",
        f"  redis      {redact_url(redis_url)} ({where})",
        f"  engine     {settings.engine}, {settings.transcribers} transcriber(s)",
        f"  access     {access}",
        f"  admin      token {'in ' + str(token_file) if token_file else 'HARK_ADMIN_TOKEN'}"
        "   (hark scale/drain/restart/audit use it)",
        "Ctrl-C stops it.",
    ]
    print("\n".join(lines), flush=True)
