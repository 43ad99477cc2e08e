"""The `hark` command: `hark up` runs the tree, `hark status` reports on it."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web
from dotenv import load_dotenv

from services.supervisor.api import create_status_app
from services.supervisor.backends import Backend, SpawnError
from services.supervisor.backends.process import ProcessBackend
from services.supervisor.supervisor import START_ORDER, StartupError, Supervisor
from services.supervisor.tree import (
    RedisNotFound,
    actor_env,
    actor_specs,
    embedded_redis,
    transcriber_spec,
)
from shared import actor, logs
from shared.audit import format_entry
from shared.config import BACKENDS, ENGINES, LOG_FORMATS, Settings, SettingsError, redact_url

log = logging.getLogger("services.supervisor")

# CLI flag -> Settings field, for the flags of `hark up` that override the environment.
UP_FLAGS = {
    "host": "host", "port": "port", "vosk_port": "vosk_port", "status_host": "status_host",
    "status_port": "status_port", "transcribers": "transcribers", "engine": "engine",
    "redis_url": "redis_url", "log_level": "log_level", "log_format": "log_format",
    "backend": "backend",
}  # fmt: skip


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
                    "(HARK_REDIS_URL)")  # fmt: skip
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
    status.add_argument("--url", help="supervisor API (default http://HARK_STATUS_HOST:"
                        "HARK_STATUS_PORT)")  # fmt: skip

    scale = sub.add_parser(
        "scale",
        help="run N transcribers: hark scale transcriber=N",
        description="Grow or shrink the transcriber pool of a running tree. Shrinking moves "
        "the sessions of the stopped transcribers, with their audio not yet transcribed, to "
        "the others. Sends HARK_ADMIN_TOKEN when set.",
    )
    scale.add_argument("target", metavar="transcriber=N")
    scale.add_argument("--url", help="supervisor API (default http://HARK_STATUS_HOST:"
                       "HARK_STATUS_PORT)")  # fmt: skip
    for verb, text in (("restart", "restart an actor gracefully (SIGTERM, then start it)"),
                       ("drain", "give a transcriber no new sessions (--off: undo)")):  # fmt: skip
        op = sub.add_parser(verb, help=text, description=f"{text[0].upper()}{text[1:]}. "
                            "Sends HARK_ADMIN_TOKEN when set.")  # fmt: skip
        op.add_argument("actor", help="actor name, as hark status shows it")
        if verb == "drain":
            op.add_argument("--off", action="store_true", help="take it back into rotation")
        op.add_argument("--url", help="supervisor API (default http://HARK_STATUS_HOST:"
                        "HARK_STATUS_PORT)")  # fmt: skip

    audit = sub.add_parser(
        "audit",
        help="print the audit log: sessions, transcripts, errors, crashes, restarts",
        description="Read the hark:audit stream through the supervisor's API.",
    )
    audit.add_argument("--session", help="only this session's entries")
    audit.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")
    audit.add_argument("-n", "--count", type=int, default=50, help="entries to show (default 50)")
    audit.add_argument("--json", action="store_true", help="one JSON object per line")
    audit.add_argument("--url", help="supervisor API (default http://HARK_STATUS_HOST:"
                       "HARK_STATUS_PORT)")  # fmt: skip
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
        sys.exit(f"hark: bad setting: {exc}")
    if args.command == "up":
        sys.exit(up(settings))
    base = args.url or f"http://{settings.status_host}:{settings.status_port}"
    if args.command == "audit":
        sys.exit(audit(base, args.session, args.follow, args.count, args.json))
    if args.command in ("scale", "restart", "drain"):
        sys.exit(operate(base, settings.admin_token, args))
    if args.watch:
        sys.exit(watch(base))
    sys.exit(status(base, args.json))


# -- hark up ---------------------------------------------------------------------------


def up(settings: Settings) -> int:
    logs.setup(settings.log_level, "supervisor")

    async def serve(stop: asyncio.Event) -> int:
        return await run_tree(settings, stop)

    # The supervisor's own stop waits for each child up to the shutdown timeout, in order.
    return actor.run(serve, grace=settings.shutdown_timeout * (len(START_ORDER) + 1))


async def run_tree(settings: Settings, stop: asyncio.Event) -> int:
    """Run the tree until `stop` is set; the exit code for `hark up`."""
    with tempfile.TemporaryDirectory(prefix="hark-") as workdir:
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
                return 1
            _banner(settings, redis_url)
            await stop.wait()
            log.info("stopping the tree")
            return 0
        finally:
            await supervisor.stop()
            await runner.cleanup()


def make_backend(settings: Settings) -> Backend:
    if settings.backend == "docker":
        from services.supervisor.backends.docker import DockerBackend

        return DockerBackend(settings)
    return ProcessBackend()


def _banner(settings: Settings, redis_url: str) -> None:
    where = "embedded, loopback only" if settings.redis_url is None else "external"
    lines = [
        "hark is up",
        f"  web page   http://{settings.host}:{settings.port}/",
        f"  WebSocket  ws://{settings.host}:{settings.port}/ws"
        f"   (vosk protocol: ws://{settings.host}:{settings.vosk_port or settings.port}"
        f"{'' if settings.vosk_port else '/vosk'})",
        f"  status     http://{settings.status_host}:{settings.status_port}/status   (hark status)",
        f"  redis      {redact_url(redis_url)} ({where})",
        f"  engine     {settings.engine}, {settings.transcribers} transcriber(s)",
        "Ctrl-C stops it.",
    ]
    print("\n".join(lines), flush=True)


# -- hark status -----------------------------------------------------------------------

COLUMNS = (
    ("NAME", "name", 15), ("STATE", "state", 9), ("PID", "pid", 8), ("UPTIME", "uptime_s", 10),
    ("RESTARTS", "restarts", 9), ("LAST EXIT", "last_exit", 18),
    ("HEARTBEAT", "heartbeat_age_s", 10), ("RESTART MS", "last_restart_ms", 10),
)  # fmt: skip


def _get(base: str, path: str, params: dict[str, str] | None = None, timeout: float = 5) -> Any:
    """GET a JSON document from the supervisor API; SupervisorUnreachable on failure."""
    url = f"{base.rstrip('/')}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SupervisorUnreachable(f"hark: supervisor not reachable at {base}: {exc}") from exc


class SupervisorUnreachable(Exception):
    """The supervisor API did not answer."""


def status(base: str, as_json: bool) -> int:
    try:
        report: dict[str, Any] = _get(base, "/status")
    except SupervisorUnreachable as exc:
        print(exc, file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_status(report))
    return 0 if report.get("healthy") else 1


def watch(base: str, interval: float = 1.0) -> int:
    """The status table, redrawn every `interval` seconds (in a terminal) until Ctrl-C."""
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            try:
                text = format_status(_get(base, "/status"))
            except SupervisorUnreachable as exc:
                text = str(exc)
            print(f"{clear}{time.strftime('%H:%M:%S')}  {base}\n{text}\n", flush=True)
            time.sleep(interval)  # a refresh rate, not a wait for anything
    except KeyboardInterrupt:
        return 0


# -- hark scale / restart / drain ------------------------------------------------------


def operate(base: str, token: str | None, args: argparse.Namespace) -> int:
    """One changing request to the supervisor; prints its answer. Exit 0 done, 1 refused,
    2 unreachable."""
    if args.command == "scale":
        role, _, count = args.target.partition("=")
        if not count.isdigit():
            print("hark scale: say ROLE=N, e.g. transcriber=4", file=sys.stderr)
            return 1
        method, path, body = "POST", "/scale", {role: int(count)}
    else:
        method = "DELETE" if getattr(args, "off", False) else "POST"
        path, body = f"/actors/{urllib.parse.quote(args.actor)}/{args.command}", None
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base.rstrip('/')}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:
            answer = json.load(resp)
    except urllib.error.HTTPError as exc:
        print(f"hark {args.command}: {_error_text(exc)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"hark: supervisor not reachable at {base}: {exc}", file=sys.stderr)
        return 2
    if args.command == "scale":
        print(f"{role}: {len(answer['actors'])} running ({', '.join(answer['actors'])})")
    else:
        print(format_status({"state": "-", "redis": True, "actors": [answer]}).split("\n", 1)[1])
    return 0


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(exc)["error"])
    except (ValueError, KeyError, TypeError):
        return f"{exc.code} {exc.reason}"


# -- hark audit --------------------------------------------------------------------


def audit(base: str, session: str | None, follow: bool, count: int, as_json: bool) -> int:
    params = {"count": str(count)}
    if session:
        params["session"] = session
    try:
        page = _get(base, "/audit", params)
        while True:
            for entry in page["entries"]:
                entry_id = entry.pop("id")
                print(json.dumps({"id": entry_id, **entry}) if as_json
                      else format_entry(entry_id, entry), flush=True)  # fmt: skip
            if not follow:
                return 0
            follow_params = {**params, "after": page["last_id"], "block_ms": "5000",
                             "count": "1000"}  # fmt: skip
            page = _get(base, "/audit", follow_params, timeout=15)
    except SupervisorUnreachable as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def format_status(report: dict[str, Any]) -> str:
    lines = [f"tree {report['state']}  redis {'up' if report['redis'] else 'DOWN'}"]
    lines.append("  ".join(title.ljust(width) for title, _, width in COLUMNS).rstrip())
    for row in report["actors"]:
        cells = [_cell(key, row.get(key)).ljust(width) for _, key, width in COLUMNS]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "uptime_s":
        return _duration(float(value))
    if key == "heartbeat_age_s":
        return f"{float(value):.1f}s"
    return str(value)


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
