"""The supervisor's Prometheus metrics: the tree's state, read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from redis.exceptions import RedisError

from services.supervisor.child import State
from services.supervisor.supervisor import Supervisor
from shared import keys


async def render(supervisor: Supervisor) -> bytes:
    """The tree as metrics: each actor's state and restarts, mailbox backlog, audit length."""
    registry = CollectorRegistry()
    up = Gauge("hark_actor_up", "1 when the actor is RUNNING", ["actor"], registry=registry)
    restarts = Gauge("hark_actor_restarts", "Restarts of the actor", ["actor"], registry=registry)
    beat = Gauge("hark_actor_heartbeat_age_seconds", "Time since the actor's last heartbeat",
                 ["actor"], registry=registry)  # fmt: skip
    lag = Gauge("hark_transcriber_lag_seconds",
                "The longest a transcriber's audio waited in its mailbox between its last "
                "two heartbeats", ["actor"], registry=registry)  # fmt: skip
    hurried = Gauge("hark_transcriber_finals_hurried_ratio",
                    "The share of a transcriber's finals decoded in a hurry (a greedy search: "
                    "others waited), over its last heartbeats", ["actor"],
                    registry=registry)  # fmt: skip
    restart_ms = Gauge("hark_actor_last_restart_milliseconds",
                       "From the actor's last exit to its replacement ready", ["actor"],
                       registry=registry)  # fmt: skip
    healthy = Gauge("hark_tree_healthy", "1 when every actor runs and Redis answers",
                    registry=registry)  # fmt: skip
    for child in supervisor.children.values():
        up.labels(child.name).set(1 if child.state == State.RUNNING else 0)
        restarts.labels(child.name).set(child.restarts)
        if child.heartbeat_age is not None:
            beat.labels(child.name).set(child.heartbeat_age)
        if child.lag_ms is not None:
            lag.labels(child.name).set(child.lag_ms / 1000)
        if child.hurried is not None:
            hurried.labels(child.name).set(child.hurried)
        if child.last_restart_ms is not None:
            restart_ms.labels(child.name).set(child.last_restart_ms)
    healthy.set(1 if supervisor.status()["healthy"] else 0)
    await _redis_metrics(supervisor, registry)
    return generate_latest(registry)


async def _redis_metrics(supervisor: Supervisor, registry: CollectorRegistry) -> None:
    redis = supervisor.redis
    if redis is None:
        return
    backlog = Gauge("hark_mailbox_entries",
                    "Audio entries waiting in a transcriber's mailbox (not yet transcribed)",
                    ["actor"], registry=registry)  # fmt: skip
    pending = Gauge("hark_mailbox_pending", "Entries read by a transcriber, not yet committed",
                    ["actor"], registry=registry)  # fmt: skip
    audit = Gauge("hark_audit_entries", "Length of the hark:audit stream", registry=registry)
    names = [c.name for c in supervisor.children.values() if c.spec.role == "transcriber"]
    try:
        pipe = redis.pipeline(transaction=False)
        for name in names:
            pipe.xlen(keys.mailbox(name))
            pipe.xpending(keys.mailbox(name), keys.GROUP)
        pipe.xlen(keys.AUDIT)
        replies = await pipe.execute(raise_on_error=False)
    except RedisError:
        return  # Redis away: hark_tree_healthy already says so
    for index, name in enumerate(names):
        length, info = replies[2 * index], replies[2 * index + 1]
        if isinstance(length, int):
            backlog.labels(name).set(length)
        if isinstance(info, dict):
            pending.labels(name).set(int(info.get("pending", 0)))
    if isinstance(replies[-1], int):
        audit.set(replies[-1])
