"""Compressed and telephone audio into the PCM the transcribers take, at the gateway.

Clients may send what browsers record (`MediaRecorder`: WebM or Ogg with Opus), MP3,
FLAC, WAV, or what telephone systems send (8-bit G.711 mu-law and A-law). Whatever
comes in, 16-bit PCM goes to the mailbox, one chunk for each frame the client sent
(empty where a frame held only a header), so acks, seqs, resume and the transcribers'
replay after a crash are those of a PCM stream. The decoding is FFmpeg's, through
PyAV. It runs here, not in a transcriber: a transcriber restarted mid-stream replays
chunks from the middle of the stream, and the middle of a container cannot be decoded
without its start.

G.711 maps each byte to a sample on its own: a table, at the client's rate. A container
is demuxed as a stream: FFmpeg reads it from a thread of the session's own, which
waits for the client's next frame when it has used every byte sent so far; the gateway
takes what it decoded then as that frame's audio (resampled to 16 kHz mono).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import queue
import threading
from typing import Any, Protocol

import av
import numpy as np

from services.gateway.protocol import CONTAINERS, TELEPHONE, ClientError

OUT_RATE = 16_000  # what a container's audio is resampled to
# How long a frame's decoding may take: FFmpeg stuck on it is the client's problem.
DECODE_TIMEOUT_S = 5.0
_END = b""


class AudioDecoder(Protocol):
    """One session's decoder: `decode` each frame in order; `close` when it ends."""

    rate: int  # the rate of the PCM it gives

    async def decode(self, data: bytes) -> bytes: ...

    async def finish(self) -> bytes:
        """The audio held back for what was to follow (a parser waits for the next
        frame's header), at the end of the stream; no frame may follow."""
        ...

    def close(self) -> None: ...


def decoder_for(encoding: str, sample_rate: int) -> AudioDecoder | None:
    """The decoder a session in `encoding` needs; None for PCM, which goes as it came."""
    if encoding in TELEPHONE:
        return G711(encoding, sample_rate)
    if encoding in CONTAINERS:
        return StreamDecoder(CONTAINERS[encoding])
    return None


_TABLES: dict[str, np.ndarray[Any, np.dtype[np.int16]]] = {}


class G711:
    """mu-law or A-law bytes to 16-bit samples, at the client's rate."""

    def __init__(self, encoding: str, sample_rate: int) -> None:
        self.rate = sample_rate
        table = _TABLES.get(encoding)
        if table is None:
            # FFmpeg's decoder run once over every byte value gives the table.
            codec: Any = av.CodecContext.create(TELEPHONE[encoding], "r")
            codec.sample_rate, codec.layout = 8000, "mono"
            frames = codec.decode(av.Packet(bytes(range(256))))
            table = _TABLES[encoding] = np.concatenate(
                [f.to_ndarray().reshape(-1) for f in frames]
            ).astype("<i2")
        self._table = table

    async def decode(self, data: bytes) -> bytes:
        out: bytes = self._table[np.frombuffer(data, dtype=np.uint8)].tobytes()
        return out

    async def finish(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


class StreamDecoder:
    """A container stream demuxed and decoded by FFmpeg as its bytes arrive."""

    rate = OUT_RATE

    def __init__(self, container: str | None) -> None:
        self._format = container
        self._loop = asyncio.get_running_loop()
        self._in: queue.SimpleQueue[bytes] = queue.SimpleQueue()  # frames for the thread
        self._buffer = b""  # what the thread holds of the frame it reads
        self._ended = False  # the thread has read the end of the stream
        self._lock = threading.Lock()
        self._out: list[bytes] = []  # PCM decoded and not yet taken
        self._given = 0  # frames handed to the thread
        self._used = 0  # frames whose every byte the thread has read (thread's count)
        self._waiting: tuple[int, asyncio.Future[None]] | None = None
        self.error: str | None = None  # why decoding stopped, if it did
        self._failed = False  # FFmpeg could not decode the stream (not: it ended)
        self._told = False  # the client has heard why
        self._thread = threading.Thread(target=self._run, name="hark-decode", daemon=True)
        self._thread.start()

    async def decode(self, data: bytes) -> bytes:
        """The PCM decoded from the stream once FFmpeg has read `data` (and waits for
        more); ClientError `bad_audio` where it cannot be decoded."""
        if self.error is None:
            self._given += 1
            out = await self._put(data, self._given)
            if self.error is None:
                return out
        self._told = True
        raise _bad(self.error)

    async def finish(self) -> bytes:
        """The end of the stream; ClientError `bad_audio` if FFmpeg could not decode it
        and the client has not been told yet (a demuxer that searches for its format's
        sync word fails only once it knows nothing more will come)."""
        out = b""
        if self.error is None and self._thread.is_alive():
            out = await self._put(_END, -1)
        if self._failed and not self._told:
            self._told = True
            raise _bad(self.error or "no audio in it")
        self.error = self.error or "the stream was closed"
        return out

    async def _put(self, data: bytes, wanted: int) -> bytes:
        """Hand the thread `data`; once it has read it all (`wanted` frames used, or -1:
        the thread ended), what it decoded."""
        done = self._loop.create_future()
        self._waiting = (wanted, done)
        self._in.put(data)
        try:
            await asyncio.wait_for(asyncio.shield(done), DECODE_TIMEOUT_S)
        except TimeoutError:
            self.error = f"decoding a frame took over {DECODE_TIMEOUT_S:g} s"
        with self._lock:
            out, self._out = b"".join(self._out), []
        return out

    def close(self) -> None:
        """Let the thread end (it reads the end of the stream and stops)."""
        self._in.put(_END)

    # -- in the decoder's thread ------------------------------------------------------

    def read(self, size: int) -> bytes:
        """FFmpeg's reads: what is left of the frame, else the next frame, once it comes
        (telling the loop the frames so far are used); b"" ends the stream."""
        if self._ended:  # FFmpeg asks again after the end: the end it stays
            return b""
        if not self._buffer:
            self._signal(self._used)
            self._buffer = self._in.get()
            if not self._buffer:  # _END: frames are never empty (the gateway refuses those)
                self._ended = True
                return b""
            self._used += 1
        out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def _run(self) -> None:
        try:
            with av.open(self, mode="r", format=self._format) as container:
                if not container.streams.audio:
                    raise ValueError("the stream holds no audio")
                resampler = av.AudioResampler(format="s16", layout="mono", rate=OUT_RATE)
                for frame in container.decode(container.streams.audio[0]):
                    self._emit(resampler.resample(frame))
                self._emit(resampler.resample(None))
        except Exception as exc:  # FFmpeg's errors, and the stream's own
            self.error, self._failed = _describe(exc), True
        finally:
            self._signal(-1)

    def _emit(self, frames: list[Any]) -> None:
        pcm = [samples.tobytes() for samples in _samples(frames)]
        with self._lock:
            self._out += pcm

    def _signal(self, used: int) -> None:
        """Tell the loop the frames up to `used` are decoded (-1: the thread ended)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            self._loop.call_soon_threadsafe(self._answered, used)

    def _answered(self, used: int) -> None:
        if self._waiting is None:
            return
        wanted, done = self._waiting
        if used < 0 or (wanted >= 0 and used >= wanted):
            if used < 0 and wanted >= 0 and self.error is None:
                self.error = "the stream ended"
            self._waiting = None
            if not done.done():
                done.set_result(None)


Pcm = np.ndarray[Any, np.dtype[np.int16]]


def decode_file(data: bytes) -> Pcm:
    """A whole file's first audio stream as 16 kHz mono 16-bit samples (a file sent to
    POST /v1/audio/transcriptions). ClientError `bad_audio` where FFmpeg cannot read it,
    or it holds no audio."""
    parts: list[Pcm] = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise ClientError("bad_audio", "the file holds no audio")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=OUT_RATE)
            for frame in container.decode(container.streams.audio[0]):
                parts += _samples(resampler.resample(frame))
            parts += _samples(resampler.resample(None))
    except av.FFmpegError as exc:
        why = _describe(exc)
        raise ClientError("bad_audio", f"the file could not be decoded ({why})") from None
    if not parts:
        raise ClientError("bad_audio", "the file's audio is empty")
    return np.concatenate(parts)


def _samples(frames: list[Any]) -> list[Pcm]:
    """Resampled frames (s16, mono) as little-endian 16-bit samples."""
    return [f.to_ndarray().reshape(-1).astype("<i2") for f in frames]


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.replace("'<none>'", "the stream")[:200]


def _bad(why: str) -> ClientError:
    return ClientError("bad_audio", f"the audio could not be decoded ({why}); open a new "
                       "session and send the stream from its start")  # fmt: skip
