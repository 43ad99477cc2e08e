"""The supervisor's HTTP API as an OpenAPI 3.1 document, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from shared import openapi as oa
from shared.openapi import BOOL, INT, NUM, STR

STATES = ["STARTING", "RUNNING", "HUNG", "BACKOFF", "STOPPING", "STOPPED", "EXITED", "FATAL"]

ACTOR = oa.obj(
    ["name", "role", "state", "pid", "restarts"],
    name=STR, role={"enum": ["redis", "gateway", "transcriber"]}, state={"enum": STATES},
    pid=oa.maybe("integer"), uptime_s=oa.maybe("number"), restarts=INT,
    last_exit=oa.maybe("string"),
    last_exit_at=oa.maybe("number"), last_restart_ms=oa.maybe("number"),
    heartbeat_age_s=oa.maybe("number"), sessions=oa.maybe("integer"), mailbox=oa.maybe("integer"),
    lag_ms=oa.maybe("integer"), draining=BOOL,
)  # fmt: skip
STATUS = oa.obj(
    ["state", "healthy", "redis", "actors"],
    state={"enum": ["OK", "DEGRADED", "FATAL"]}, healthy=BOOL, redis=BOOL,
    backend={"enum": ["process", "docker"]}, uptime_s=NUM,
    actors={"type": "array", "items": ACTOR},
)  # fmt: skip
HEALTH = oa.obj(["status", "healthy"], status=STR, healthy=BOOL)
ACTOR_NAME = {"name": "name", "in": "path", "required": True, "schema": STR}
CHANGED = {
    "200": oa.json_body(ACTOR, "the actor's row afterwards"),
    **oa.ADMIN_ERRORS,
    "404": oa.error("no actor of that name"),
    "409": oa.error("it cannot be done now; the message says why"),
}
ADMIN: list[dict[str, list[str]]] = [{"admin": []}, {}]

PATHS: dict[str, Any] = {
    "/": {"get": {"summary": "The dashboard: the tree live, restart and drain buttons",
                  "responses": {"200": oa.text_body("text/html", "the page")}}},
    "/status": {"get": {"summary": "The tree", "responses": {
        "200": oa.json_body(STATUS, "every actor, in start order")}}},
    "/health": {"get": {"summary": "Healthy: every actor RUNNING and Redis answering",
                        "responses": {"200": oa.json_body(HEALTH, "healthy"),
                                      "503": oa.json_body(HEALTH, "not healthy")}}},
    "/audit": {"get": {
        "summary": "Audit entries, oldest first",
        "parameters": [
            {"name": "count", "in": "query", "schema": INT, "description": "default 100"},
            {"name": "session", "in": "query", "schema": STR},
            {"name": "after", "in": "query", "schema": STR,
             "description": "only entries after this id (for following the log)"},
            {"name": "block_ms", "in": "query", "schema": INT,
             "description": "with after: wait this long for the first"},
        ],
        "responses": {
            "200": oa.json_body(oa.obj(["entries", "last_id"], last_id=STR, entries={
                "type": "array", "items": oa.obj(["id", "event"], id=STR, event=STR)}),
                "entries and the newest id"),
            "400": oa.text_body("text/plain", "count or block_ms is not an integer"),
            "503": oa.text_body("text/plain", "Redis not reachable"),
            **oa.ADMIN_ERRORS,
        },
        "security": ADMIN,
    }},
    "/metrics": {"get": {"summary": "Prometheus metrics", "responses": oa.METRICS}},
    "/actors/{name}/restart": {"parameters": [ACTOR_NAME], "post": {
        "summary": "Restart gracefully (SIGTERM, then start again); answers once it is up",
        "security": ADMIN, "responses": CHANGED}},
    "/actors/{name}/drain": {
        "parameters": [ACTOR_NAME],
        "post": {"summary": "Give a transcriber no new sessions", "security": ADMIN,
                 "responses": CHANGED},
        "delete": {"summary": "Take a drained transcriber back into rotation",
                   "security": ADMIN, "responses": CHANGED},
    },
    "/scale": {"post": {
        "summary": "Run N transcribers; answers once they run",
        "security": ADMIN,
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "minProperties": 1, "maxProperties": 1,
            "additionalProperties": {"type": "integer"},
            "example": {"transcriber": 3}}}}},
        "responses": {
            "200": oa.json_body(oa.obj(["actors"], actors={"type": "array", "items": STR}),
                             "the transcribers now"),
            "400": oa.error("not one role and an integer count"),
            **oa.ADMIN_ERRORS,
            "409": oa.error("that role does not scale, the count is out of range, or a new "
                            "transcriber did not start (the pool then stays as it was)"),
        },
    }},
}  # fmt: skip

OPENAPI = oa.document(
    "hark supervisor",
    "The process tree: status, health, audit log, metrics, and the operations that "
    "change it (restart, drain, scale), which need `Authorization: Bearer "
    "<HARK_ADMIN_TOKEN>` when one is set, and a loopback client otherwise.",
    PATHS,
)
