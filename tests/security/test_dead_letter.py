"""A mailbox entry a transcriber cannot use goes to the dead-letter stream and is
reported; the transcriber goes on with the rest (a real Redis, the actor in this process)."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from services.transcriber.actor import Transcriber
from services.transcriber.engines.mock import MockEngine
from shared import keys
from shared.config import Settings
from shared.messages import Transcript
from tests.integration.test_transcriber import NAME, Channel, actor, chunk, pending

__all__ = ["actor"]

pytestmark = pytest.mark.timeout(30)


async def test_malformed_entry_is_reported_and_does_not_wedge_the_actor(
    redis: Redis, actor: Transcriber
) -> None:
    async with Channel(redis, "c1") as channel:
        await redis.xadd(keys.mailbox(NAME), {"m": b"\xc1 not msgpack"})
        await redis.xadd(keys.mailbox(NAME), {"m": chunk(1)})
        result = await channel.next()
    assert isinstance(result, Transcript) and result.seq == 1
    events = [f[b"event"] for _, f in await redis.xrange(keys.AUDIT)]
    assert b"dead_letter" in events
    assert await pending(redis) == 0
    [(_, dead)] = await redis.xrange(keys.DEAD_LETTER)
    assert dead[b"payload"] == b"\xc1 not msgpack"
    assert dead[b"mailbox"] == keys.mailbox(NAME).encode()
    assert dead[b"reason"].startswith(b"undecodable")


async def test_an_entry_read_again_and_again_goes_to_the_dead_letter_stream(
    redis: Redis, redis_url: str
) -> None:
    # Incarnations that each read these chunks and died before committing them: the
    # first one six times (more than HARK_MAX_DELIVERIES, 5), the second once.
    mailbox = keys.mailbox(NAME)
    await redis.xgroup_create(mailbox, keys.GROUP, id="0", mkstream=True)
    poison = await redis.xadd(mailbox, {"m": chunk(1)})
    await redis.xreadgroup(keys.GROUP, NAME, {mailbox: ">"}, count=10)
    for _ in range(5):
        await redis.xreadgroup(keys.GROUP, NAME, {mailbox: "0"}, count=1)
    await redis.xadd(mailbox, {"m": chunk(2)})
    await redis.xreadgroup(keys.GROUP, NAME, {mailbox: ">"}, count=10)

    client = Redis.from_url(redis_url)
    successor = Transcriber(Settings(redis_url=redis_url), MockEngine(), client, NAME)
    async with Channel(redis, "c1") as channel:
        await successor.start()
        result = await channel.next()
    await client.aclose()
    assert isinstance(result, Transcript) and result.seq == 2
    assert successor.recovered == 1
    [(_, dead)] = await redis.xrange(keys.DEAD_LETTER)
    assert (dead[b"entry"], dead[b"payload"]) == (poison, chunk(1))
    assert dead[b"reason"] == b"read 7 times, never committed"
    assert await pending(redis) == 0
