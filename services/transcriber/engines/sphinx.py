"""The sphinx engine: pocketsphinx with the US English model its wheel ships.

Small and fast, less accurate than whisper; on the utterances voice activity cuts
(see `utterances`). English only. The decoder runs in a process of its own
(`sphinx_worker`): it holds the GIL while it decodes, which in the actor's process
stalled the message loop and its heartbeat.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path

import msgpack
import numpy as np
import pocketsphinx  # noqa: F401 - missing, the engine is unavailable at start, not in the worker

from services.transcriber.engines import DEFAULT_OPTIONS, BadSetting, Decoded, Options
from services.transcriber.engines.segmenter import Audio
from services.transcriber.engines.utterances import UtteranceSession, open_session, vad_model
from shared.config import Settings
from shared.messages import unknown_language

ROOT = Path(__file__).resolve().parents[3]  # where `services` is, for the worker's imports


class SphinxWorkerError(RuntimeError):
    """The decoder process failed or exited: the actor ends, and its restart starts a new one."""


class _Worker:
    """The decoder process, one request at a time (the actor's decode loop is the one caller)."""

    def __init__(self) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "services.transcriber.engines.sphinx_worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            env={**os.environ, "PYTHONPATH": path},
        )  # fmt: skip
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self.pid = self._proc.pid
        self._requests = self._proc.stdin
        self._replies = msgpack.Unpacker(self._proc.stdout, use_list=False)
        # Closing its stdin ends it: at close(), at collection, at this process's exit.
        self._finalizer = weakref.finalize(self, _stop, self._proc)

    def ready(self) -> None:
        """Wait until the model is loaded (a broken install fails the actor's start)."""
        self._next()

    def call(self, pcm: bytes, final: bool) -> dict[str, object]:
        try:
            self._requests.write(msgpack.packb([pcm, final]))
        except (BrokenPipeError, ValueError):
            raise self._gone() from None
        reply = self._next()
        if "error" in reply:
            raise SphinxWorkerError(f"pocketsphinx: {reply['error']}")
        return reply

    def close(self) -> None:
        self._finalizer()

    def _next(self) -> dict[str, object]:
        try:
            reply = next(self._replies)
        except StopIteration:
            raise self._gone() from None
        assert isinstance(reply, dict)
        return reply

    def _gone(self) -> SphinxWorkerError:
        code = self._proc.wait()
        return SphinxWorkerError(f"the pocketsphinx process (pid {self._proc.pid}) exited: {code}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SphinxEngine:
    """One pocketsphinx decoder process per actor; utterances are decoded one at a time."""

    name = "sphinx"
    blocking = True
    languages = ("en",)

    def __init__(self, partial_interval: float = 1.0, end_silence: float = 0.6) -> None:
        self.partial_interval = partial_interval
        self.end_silence = end_silence
        self._worker = _Worker()
        self.decoder_pid = self._worker.pid
        self._vad = vad_model()  # loaded while the worker loads its model
        self._worker.ready()

    @classmethod
    def from_settings(cls, settings: Settings) -> SphinxEngine:
        return cls(settings.partial_interval, settings.end_silence)

    def open_session(
        self, session_id: str, encoding: str, sample_rate: int,
        options: Options = DEFAULT_OPTIONS,
    ) -> UtteranceSession:  # fmt: skip
        """A session; `prompt` and `hotwords` are hints it does not take (its model has
        no such input), a language other than English it refuses."""
        if options.language is not None and options.language not in self.languages:
            raise BadSetting(unknown_language(options.language, self.languages)
                             + "; the whisper engine knows many")  # fmt: skip
        return open_session(self, self._vad, encoding, sample_rate, self.end_silence, options)

    def transcribe(
        self, audio: Audio, final: bool, options: Options = DEFAULT_OPTIONS, hurry: bool = False
    ) -> Decoded:
        pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        reply = self._worker.call(pcm, final)
        words = reply["words"]
        assert isinstance(words, tuple)
        timed = [(str(w), float(s), float(e), float(p)) for w, s, e, p in words]
        return Decoded(str(reply["text"]), timed)

    def close(self) -> None:
        """End the decoder process now (else it ends with this engine or this process)."""
        self._worker.close()
