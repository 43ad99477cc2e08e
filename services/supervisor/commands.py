"""The `hark` commands that ask a running supervisor over HTTP: status, scale, restart,
drain, audit. Exit codes: 0 done, 1 refused or not healthy, 2 supervisor unreachable."""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from shared.audit import format_entry

# -- hark status -----------------------------------------------------------------------

COLUMNS = (
    ("NAME", "name", 15), ("STATE", "state", 9), ("PID", "pid", 8), ("UPTIME", "uptime_s", 10),
    ("RESTARTS", "restarts", 9), ("LAST EXIT", "last_exit", 18),
    ("HEARTBEAT", "heartbeat_age_s", 10), ("RESTART MS", "last_restart_ms", 10),
    ("LAG MS", "lag_ms", 6), ("BUSY", "busy", 5), ("COST", "cost", 5),
    ("HURRIED", "hurried", 7),
)  # fmt: skip


def call_api(
    base: str,
    path: str,
    *,
    token: str | None = None,
    method: str = "GET",
    body: Any = None,
    params: dict[str, str] | None = None,
    timeout: float = 5,
) -> Any:
    """The JSON answer of the supervisor API; SupervisorUnreachable when it does not
    answer (an HTTP error status is raised as urllib's HTTPError)."""
    url = f"{base.rstrip('/')}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError:
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SupervisorUnreachable(f"hark: supervisor not reachable at {base}: {exc}") from exc


class SupervisorUnreachable(Exception):
    """The supervisor API did not answer."""


def status(base: str, as_json: bool) -> int:
    try:
        report: dict[str, Any] = call_api(base, "/status")
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
                text = format_status(call_api(base, "/status"))
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
    try:
        answer = call_api(base, path, token=token, method=method, body=body, timeout=120)
    except urllib.error.HTTPError as exc:
        print(f"hark {args.command}: {_error_text(exc)}", file=sys.stderr)
        return 1
    except SupervisorUnreachable as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.command == "scale":
        print(f"{role}: {len(answer['actors'])} running ({', '.join(answer['actors'])})")
    else:
        print(format_rows([answer]))
    return 0


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.load(exc)["error"])
    except (ValueError, KeyError, TypeError):
        return f"{exc.code} {exc.reason}"


# -- hark audit --------------------------------------------------------------------


def audit(
    base: str, token: str | None, session: str | None, follow: bool, count: int, as_json: bool
) -> int:
    params = {"count": str(count)}
    if session:
        params["session"] = session
    try:
        page = call_api(base, "/audit", token=token, params=params)
        while True:
            for entry in page["entries"]:
                entry_id = entry.pop("id")
                print(json.dumps({"id": entry_id, **entry}) if as_json
                      else format_entry(entry_id, entry), flush=True)  # fmt: skip
            if not follow:
                return 0
            follow_params = {**params, "after": page["last_id"], "block_ms": "5000",
                             "count": "1000"}  # fmt: skip
            page = call_api(base, "/audit", token=token, params=follow_params, timeout=15)
    except urllib.error.HTTPError as exc:
        print(f"hark audit: {_error_text(exc)}", file=sys.stderr)
        return 1
    except SupervisorUnreachable as exc:
        print(exc, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def format_status(report: dict[str, Any]) -> str:
    heading = f"tree {report['state']}  redis {'up' if report['redis'] else 'DOWN'}"
    return f"{heading}\n{format_rows(report['actors'])}"


def format_rows(rows: list[dict[str, Any]]) -> str:
    """Actor rows (as /status has them) as a table with a header line."""
    lines = ["  ".join(title.ljust(width) for title, _, width in COLUMNS).rstrip()]
    for row in map(_row_cells, rows):
        cells = [_cell(key, row.get(key)).ljust(width) for _, key, width in COLUMNS]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _row_cells(row: dict[str, Any]) -> dict[str, Any]:
    if row.get("draining") and row.get("state") == "RUNNING":
        return {**row, "state": "DRAINING"}  # running, given no new sessions
    return row


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "uptime_s":
        return duration(float(value))
    if key == "heartbeat_age_s":
        return f"{float(value):.1f}s"
    return str(value)


def duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
