"""A TCP proxy in front of a Redis, for tests that need the path to it changed: slowed
down (`throttle`), or behind TLS (`ssl`, a server context: clients then use rediss://)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_module
from urllib.parse import urlsplit, urlunsplit

# Bytes a second the link carries from its clients to Redis while `throttle` is set
# (replies go back at full speed).
THROTTLED_RATE = 10_000


class Link:
    def __init__(self, redis_url: str, ssl: ssl_module.SSLContext | None = None) -> None:
        self.redis = urlsplit(redis_url)
        self.ssl = ssl
        self.throttle = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        """Start listening; the Redis URL that leads through the link."""
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl)
        port = self.server.sockets[0].getsockname()[1]
        scheme = "rediss" if self.ssl else self.redis.scheme
        netloc = self.redis.netloc.rpartition("@")[0]
        netloc = f"{netloc}@127.0.0.1:{port}" if netloc else f"127.0.0.1:{port}"
        return urlunsplit(self.redis._replace(scheme=scheme, netloc=netloc))

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection(self.redis.hostname, self.redis.port)
        pipes = [self._pipe(client_r, redis_w, slow=True), self._pipe(redis_r, client_w)]
        with contextlib.suppress(ConnectionError, ssl_module.SSLError):
            await asyncio.gather(*pipes)
        for writer in (client_w, redis_w):
            writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, slow: bool = False
    ) -> None:
        while data := await reader.read(THROTTLED_RATE // 20 if slow else 65536):
            writer.write(data)
            await writer.drain()
            if slow and self.throttle.is_set():
                await asyncio.sleep(len(data) / THROTTLED_RATE)  # the link's pace

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
