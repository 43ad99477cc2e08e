"""Resuming a session after a lost connection (a gateway crash, a network drop).

What a resume needs is already in Redis: the session record (`hark:session:{id}`:
client id, actor, audio format, the SHA-256 of the resume token), the finals the
transcriber stored (`hark:results:{id}`), and the session's audio not yet covered
by a final (its entries in the actor's mailbox, which holds nothing else). The
last chunk the gateway accepted is the newest of those, so the hot path writes
nothing extra per chunk for resume's sake.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from redis.asyncio import Redis

from services.gateway.protocol import SETTINGS, AudioFormat, ClientError
from shared import keys
from shared.messages import AudioChunk, MessageError, SessionControl, Transcript, decode
from shared.redis_util import stream_entries, text_map

SCAN_BATCH = 500


@dataclass(frozen=True)
class Resumable:
    """A session record that matched its resume token."""

    session_id: str
    client_id: str
    actor: str
    fmt: AudioFormat
    closed: bool
    created_at: float  # when the session was first opened (epoch seconds)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def load(redis: Redis, session_id: str, token: str, key: str = "") -> Resumable:
    """The session `session_id` if `token` is its resume token and `key` the name of
    the API key it was opened with ("" where the gateway has none); else ClientError.

    An unknown session, a wrong token and another key get the same answer, so the
    error tells a stranger nothing about which sessions exist.
    """
    refused = ClientError("bad_resume", "unknown session or wrong resume token", fatal=True)
    if not session_id or not token or len(session_id) > 64 or len(token) > 128:
        raise refused
    record = text_map(await redis.hgetall(keys.session(session_id)))
    stored = record.get("token_sha256", "")
    # Compared in constant time: the check must not leak how much of a guess was right.
    if not hmac.compare_digest(stored.encode(), token_hash(token).encode()) or not stored:
        raise refused
    if record.get("key", "") != key:
        raise refused
    fmt = AudioFormat().updated({k: record[k] for k in SETTINGS if k in record})
    return Resumable(session_id, record["client_id"], record["actor"], fmt,
                     closed=record.get("closed") == "1",
                     created_at=float(record.get("created_at", "0")))  # fmt: skip


async def last_accepted(redis: Redis, actor: str, session_id: str) -> tuple[int, float]:
    """The highest seq of the session's audio that Redis holds (0 when none), and how
    many seconds of audio that is: exact while the last chunk is still in the
    mailbox, else the end of the last final (silence after it is not counted)."""
    last, seconds = 0, 0.0
    for _, fields in stream_entries(await redis.xrevrange(keys.results(session_id), count=1)):
        final = _transcript(fields.get(b"m"))
        if final is not None:
            last, seconds = final.seq, final.end or 0.0
    async for _, _, msg in session_entries(redis, actor, session_id):
        if isinstance(msg, AudioChunk) and msg.seq >= last:
            last = msg.seq
            seconds = msg.start_s + msg.seconds
    return last, seconds


async def session_entries(
    redis: Redis, actor: str, session_id: str
) -> AsyncGenerator[tuple[bytes, bytes, AudioChunk | SessionControl], None]:
    """(entry id, payload, message) of the session's entries in `actor`'s mailbox, in order.

    The mailbox holds only uncommitted entries, so this reads little.
    """
    start = "-"
    while True:
        raw = await redis.xrange(keys.mailbox(actor), min=start, count=SCAN_BATCH)
        entries = stream_entries(raw)
        for entry_id, fields in entries:
            payload = fields.get(b"m")
            try:
                msg = decode(payload) if payload else None
            except MessageError:
                continue
            if isinstance(msg, AudioChunk | SessionControl) and msg.session_id == session_id:
                assert payload is not None
                yield entry_id, payload, msg
        if len(entries) < SCAN_BATCH:
            return
        start = "(" + entries[-1][0].decode()


async def close_pending(redis: Redis, actor: str, session_id: str) -> bool:
    """Whether the session's `close` waits in `actor`'s mailbox still: its flush is not
    done (a transcriber commits a control entry as it answers it). Its `end`, which a
    gateway sends after the close, does not count: no answer comes for it."""
    async with contextlib.aclosing(session_entries(redis, actor, session_id)) as entries:
        async for _, _, msg in entries:
            if isinstance(msg, SessionControl) and msg.op == "close":
                return True
    return False


async def stored_finals(redis: Redis, session_id: str, after: int) -> list[Transcript]:
    """The session's stored finals with seq > `after`, in seq order, each seq once."""
    finals: dict[int, Transcript] = {}
    for _, fields in stream_entries(await redis.xrange(keys.results(session_id))):
        try:
            msg = decode(fields.get(b"m", b""))
        except MessageError:
            continue
        if isinstance(msg, Transcript) and msg.final and msg.seq > after:
            finals.setdefault(msg.seq, msg)  # a redelivered final repeats an earlier one
    return [finals[seq] for seq in sorted(finals)]


def _transcript(payload: bytes | None) -> Transcript | None:
    try:
        msg = decode(payload) if payload else None
    except MessageError:
        return None
    return msg if isinstance(msg, Transcript) else None


async def move_entries(redis: Redis, old: str, new: str, session_id: str) -> int:
    """Move the session's uncommitted mailbox entries from `old` to `new`, in order.

    One MULTI: the entries are added to the new mailbox and acknowledged and deleted
    in the old one together, so neither a crash in between nor the old actor coming
    back can make them processed twice or not at all. The number moved.
    """
    ids: list[bytes] = []
    payloads: list[bytes] = []
    async for entry_id, payload, _ in session_entries(redis, old, session_id):
        ids.append(entry_id)
        payloads.append(payload)
    if not ids:
        return 0
    pipe = redis.pipeline(transaction=True)
    for payload in payloads:
        pipe.xadd(keys.mailbox(new), {"m": payload})
    pipe.xack(keys.mailbox(old), keys.GROUP, *ids)
    pipe.xdel(keys.mailbox(old), *ids)
    await pipe.execute()
    return len(ids)
