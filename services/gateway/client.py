"""A Python client for hark's `/ws`, resuming on its own after a lost connection.

    python -m services.gateway.client speech.wav [--url ws://127.0.0.1:8000/ws] [--json]

Exit status: 0 when the server's close summary says the transcript is complete, 3
when it is not (the chunks without a final and why are printed), 1 when the
session could not be kept up, 2 for bad arguments.

`Client.run(chunks, on_reply)` streams audio chunks and hands every reply to
`on_reply`. Until a chunk is acked it stays in memory; when the connection drops
(a gateway restart, a network blip) the client reconnects with its session id and
resume token, learns the last chunk the server holds (`last_seq`), resends only the
chunks after it, and gets the finals it missed replayed, each once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import wave
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import aiohttp

Reply = dict[str, Any]
RETRYABLE_REFUSALS = ("no_transcriber", "shutting_down", "unavailable")


class ResumeFailed(Exception):
    """The connection could not be restored within the retry budget, or the server refused."""


class Client:
    """One session's worth of streaming, across as many connections as it takes."""

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000/ws",
        *,
        encoding: str = "pcm_s16le",
        sample_rate: int = 16000,
        window: int = 50,
        retry_for: float = 30.0,
        api_key: str | None = None,
        speed: float | None = None,
        chunk_s: float = 0.1,
    ) -> None:
        self.url = url
        # Sent as `Authorization: Bearer` where the gateway has API keys.
        self.headers = {} if api_key is None else {"Authorization": f"Bearer {api_key}"}
        self.params = {"encoding": encoding, "sample_rate": str(sample_rate)}
        self.window = window  # chunks in flight before waiting for acks
        self.retry_for = retry_for
        # `speed` times real time, each chunk `chunk_s` of audio, as a live source sends
        # (None: as fast as the acks allow). The clock runs from the first chunk and
        # across resumes: what a reconnect held up is sent at once after it.
        self.speed, self.chunk_s = speed, chunk_s
        self._began: float | None = None
        self.session_id: str | None = None
        self.resume_token: str | None = None
        self.last_final = 0
        self.resumes = 0
        self._pending: deque[tuple[int, bytes]] = deque()  # sent, not yet acked
        self._sent = 0
        self._acked = asyncio.Event()
        self._deadline: float | None = None  # while reconnecting: when to give up
        self._delay = 0.05

    async def run(self, chunks: Iterable[bytes], on_reply: Callable[[Reply], None]) -> Reply:
        """Stream `chunks`, then close the session; the server's closing summary."""
        source = iter(chunks)
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    return await self._connection(http, source, on_reply)
                except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
                    await self._reconnect_wait(exc)

    async def _connection(
        self,
        http: aiohttp.ClientSession,
        source: Iterable[bytes],
        on_reply: Callable[[Reply], None],
    ) -> Reply:
        async with http.ws_connect(self._url(), heartbeat=10, headers=self.headers) as ws:
            hello = await self._greeting(ws)
            on_reply(hello)
            self._deadline = None
            reader = asyncio.create_task(self._read(ws, on_reply))
            try:
                for _, chunk in list(self._pending):  # what the server did not keep
                    await ws.send_bytes(chunk)
                await self._send_all(ws, source, reader)
                await ws.send_str(json.dumps({"type": "close"}))
                return await reader
            finally:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    def _url(self) -> str:
        params = dict(self.params)
        if self.session_id and self.resume_token:
            params.update(session_id=self.session_id, resume_token=self.resume_token,
                          last_final=str(self.last_final))  # fmt: skip
        return f"{self.url}?{urlencode(params)}"

    async def _greeting(self, ws: aiohttp.ClientWebSocketResponse) -> Reply:
        hello: Reply = await ws.receive_json(timeout=30)
        if hello["status"] == "error":
            if hello["code"] in RETRYABLE_REFUSALS:
                raise ConnectionError(hello["error"])
            raise ResumeFailed(f"{hello['code']}: {hello['error']}")
        self.session_id, self.resume_token = hello["session_id"], hello["resume_token"]
        if hello["status"] == "resumed":
            self.resumes += 1
            last = hello["last_seq"]
            self._drop_acked(last)
            if self._pending and self._pending[0][0] != last + 1:
                # The server holds less than it acked: those chunks are gone from here.
                lost = self._pending[0][0] - 1
                raise ResumeFailed(f"the server resumed at chunk {last}, but chunks up to "
                                   f"{lost} were acknowledged and dropped")  # fmt: skip
            if not self._pending and self._sent != last:
                raise ResumeFailed(f"the server resumed at chunk {last}; {self._sent} were sent")
        return hello

    async def _send_all(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        source: Iterable[bytes],
        reader: asyncio.Task[Reply],
    ) -> None:
        loop = asyncio.get_running_loop()
        for chunk in source:
            if self.speed is not None:
                if self._began is None:
                    self._began = loop.time()
                delay = self._began + self._sent * self.chunk_s / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the clock of live audio
            # Pending from the moment it leaves the source: if the connection drops while
            # this waits for room, the chunk is resent after the resume like any other.
            self._sent += 1
            self._pending.append((self._sent, chunk))
            while len(self._pending) > self.window:
                self._acked.clear()
                await _first(self._acked.wait(), reader)
            await ws.send_bytes(chunk)
        while self._pending:  # every chunk acked before the close
            self._acked.clear()
            await _first(self._acked.wait(), reader)

    async def _read(
        self, ws: aiohttp.ClientWebSocketResponse, on_reply: Callable[[Reply], None]
    ) -> Reply:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            reply: Reply = json.loads(msg.data)
            status = reply["status"]
            if status == "received":
                self._drop_acked(reply["seq"])
                self._acked.set()
            elif status == "transcript" and reply["final"]:
                self.last_final = max(self.last_final, reply["seq"])
            on_reply(reply)
            if status == "error" and reply.get("code") == "unavailable":
                # Redis did not take audio (or a control): the gateway closes; resume,
                # which says what it holds, and send the rest again from there.
                raise ConnectionError(f"unavailable: {reply.get('error')}")
            if status == "closed":
                return reply
        raise ConnectionError(f"connection lost (close code {ws.close_code})")

    def _drop_acked(self, seq: int) -> None:
        while self._pending and self._pending[0][0] <= seq:
            self._pending.popleft()

    async def _reconnect_wait(self, exc: BaseException) -> None:
        if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status in (401, 403):
            raise ResumeFailed(f"refused (HTTP {exc.status}): check the API key") from exc
        loop = asyncio.get_running_loop()
        if self._deadline is None:
            self._deadline = loop.time() + self.retry_for
            self._delay = 0.05
        if loop.time() >= self._deadline:
            raise ResumeFailed(f"no connection for {self.retry_for:.0f} s: {exc}") from exc
        await asyncio.sleep(self._delay)  # back off between attempts
        self._delay = min(self._delay * 2, 2.0)


async def _first(waiting: Any, reader: asyncio.Task[Reply]) -> None:
    """Wait for `waiting`, but fail at once if the reader ends (the connection is gone)."""
    waiter = asyncio.ensure_future(waiting)
    done, _ = await asyncio.wait([waiter, reader], return_when=asyncio.FIRST_COMPLETED)
    if waiter not in done:
        waiter.cancel()
        reader.result()  # raises why the connection ended
        raise ConnectionError("connection closed")


def wav_chunks(path: str, ms: int = 100) -> tuple[int, list[bytes]]:
    """The sample rate of a 16-bit mono WAV and its audio in `ms` chunks."""
    with wave.open(path) as wav:
        if wav.getsampwidth() != 2 or wav.getnchannels() != 1:
            raise ValueError(f"{path}: hark's client streams 16-bit mono WAV")
        rate, frames = wav.getframerate(), wav.readframes(wav.getnframes())
    step = rate * ms // 1000 * 2
    return rate, [frames[i : i + step] for i in range(0, len(frames), step)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.gateway.client")
    parser.add_argument("wav", help="16-bit mono WAV file")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/ws")
    parser.add_argument("--json", action="store_true", help="print every reply as JSON")
    parser.add_argument("--speed", type=float, metavar="X",
                        help="send at X times real time, as a live source (default: as fast "
                        "as the acks allow)")  # fmt: skip
    parser.add_argument("--api-key", default=os.environ.get("HARK_API_KEY"),
                        help="where the gateway has API keys (default: $HARK_API_KEY)")  # fmt: skip
    args = parser.parse_args(argv)
    rate, chunks = wav_chunks(args.wav)
    client = Client(args.url, sample_rate=rate, api_key=args.api_key, speed=args.speed)

    def show(reply: Reply) -> None:
        if args.json:
            print(json.dumps(reply), flush=True)
        elif reply["status"] == "transcript" and reply["final"]:
            print(f"[{reply['seq']}] {reply['text']}", flush=True)
        elif reply["status"] in ("error", "resumed"):
            print(json.dumps(reply), file=sys.stderr, flush=True)

    try:
        summary = asyncio.run(client.run(chunks, show))
    except ResumeFailed as exc:
        print(f"hark client: {exc}", file=sys.stderr)
        return 1
    print(f"done: {summary['chunks']} chunks, {summary['finals']} finals, "
          f"{client.resumes} resume(s)", file=sys.stderr)  # fmt: skip
    if summary.get("complete") is False:
        # Audio was accepted that no final covers: the transcript is not whole.
        first, last = (summary.get("missing_seqs") or ["?", "?"])[:2]
        print(f"hark client: incomplete: no final for chunks {first}-{last} "
              f"({summary.get('why', 'no reason given')})", file=sys.stderr)  # fmt: skip
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
