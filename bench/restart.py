"""Restart latency: SIGKILL a transcriber, time until its replacement is RUNNING.

    python -m bench.restart --kills 50

Starts `hark up --engine mock` (embedded Redis, free loopback ports), then kills
transcriber-0 `--kills` times, `--interval` seconds apart (time for the supervisor to
warm its spare again). Each kill is timed from just before the signal to the
supervisor's `actor_ready` audit entry for the new incarnation (its `at` is when the
supervisor saw it ready), read with a blocking `/audit?after=` request; `actor_exit`
gives the time the exit was noticed. Backoff is turned off for the run
(HARK_BACKOFF_MAX=0.001, HARK_RESTART_INTENSITY=1000): by design the supervisor waits
before restarting a child that keeps crashing, and that wait is policy, not speed.
Prints one JSON line with the percentiles in ms.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from bench.load import Hark, arg_parser, percentiles
from services.supervisor.commands import call_api
from shared.auth import read_admin_token

VICTIM = "transcriber-0"


def _pid(status_url: str) -> int:
    actors = call_api(status_url, "/status", timeout=30)["actors"]
    return int(next(a["pid"] for a in actors if a["name"] == VICTIM and a["state"] == "RUNNING"))


def kill_once(status_url: str) -> dict[str, float]:
    """Kill the victim once; ms from the signal to the exit noticed and to RUNNING again."""
    pid = _pid(status_url)
    # The audit log is the operator's: the token `hark up` made up, as `hark audit` reads it.
    token = read_admin_token(status_url)
    last = call_api(status_url, "/audit", token=token, params={"count": "1"})["last_id"]
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    seen: dict[str, float] = {}
    deadline = t0 + 30
    while "ready" not in seen:
        if time.time() > deadline:
            raise RuntimeError(f"{VICTIM} was not RUNNING again within 30 s")
        page = call_api(status_url, "/audit", token=token, timeout=30,
                        params={"after": last, "block_ms": "5000", "count": "100"})  # fmt: skip
        last = page["last_id"]
        for entry in page["entries"]:
            if entry.get("child") != VICTIM:
                continue
            if entry["event"] == "actor_exit":
                seen["exit"] = (float(entry["at"]) - t0) * 1000
            elif entry["event"] == "actor_ready" and int(entry.get("pid", pid)) != pid:
                seen["ready"] = (float(entry["at"]) - t0) * 1000
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = arg_parser("bench.restart", __doc__)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--interval", type=float, default=1.5, help="seconds between kills")
    args = parser.parse_args(argv)

    hark = Hark(env={"HARK_BACKOFF_MIN": "0.001", "HARK_BACKOFF_MAX": "0.001",
                     "HARK_RESTART_INTENSITY": "1000"})  # fmt: skip
    status_url = hark.status_url
    exits, readies = [], []
    try:
        for _ in range(args.kills):
            time.sleep(args.interval)  # the spare warms up again meanwhile
            seen = kill_once(status_url)
            exits.append(seen.get("exit", float("nan")))
            readies.append(seen["ready"])
    finally:
        hark.stop()
    print(json.dumps({
        "scenario": "restart", "kills": len(readies), "interval_s": args.interval,
        "kill_to_exit_seen_ms": percentiles(exits),
        "kill_to_running_ms": {**percentiles(readies), "max": round(max(readies), 2)},
    }), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
