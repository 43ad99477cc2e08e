"""The sphinx engine's decoder process: it leaves the actor's thread free, fails loudly
and never outlives its actor."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest

from services.transcriber.engines.sphinx import SphinxEngine, SphinxWorkerError
from tests import wer
from tests.speech import monologue

pytest.importorskip("pocketsphinx")


@pytest.fixture(scope="module")
def engine() -> Iterator[SphinxEngine]:
    engine = SphinxEngine()
    yield engine
    engine.close()


def _wait_exit(pid: int, timeout: float) -> bool:
    """Whether process `pid` (not necessarily a child) is gone within `timeout`."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def test_a_long_decode_leaves_the_actor_s_event_loop_thread_running(engine: SphinxEngine) -> None:
    # In the actor's own process pocketsphinx held the GIL for the whole decode
    # (about 2 s here for 15 s of speech): the message loop and its heartbeat stopped,
    # and the supervisor killed a healthy transcriber as HUNG.
    speech = monologue(15.0)
    audio = speech.pcm.astype(np.float32) / 32768
    out: list[str] = []
    decode = threading.Thread(target=lambda: out.append(engine.transcribe(audio, True)[0]))
    longest, last = 0.0, time.monotonic()
    decode.start()
    while decode.is_alive():
        decode.join(0.001)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    assert wer.errors(speech.text, out[0]) <= 0.1 * len(wer.normalise(speech.text))
    assert longest < 0.3, f"this thread stood still for {longest:.2f} s"


def test_a_dead_decoder_process_fails_the_decode_with_its_exit() -> None:
    engine = SphinxEngine()
    os.kill(engine.decoder_pid, signal.SIGKILL)
    with pytest.raises(SphinxWorkerError, match=rf"pid {engine.decoder_pid}\) exited: -9"):
        engine.transcribe(np.zeros(16000, dtype=np.float32), True)
    engine.close()


def test_the_decoder_process_ends_when_its_actor_is_killed() -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", "from services.transcriber.engines.sphinx import SphinxEngine; "
         "import sys; e = SphinxEngine(); print(e.decoder_pid, flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert owner.stdout is not None
        decoder_pid = int(owner.stdout.readline())
        assert not _wait_exit(decoder_pid, 0)
    finally:
        owner.kill()
        owner.wait()
    assert _wait_exit(decoder_pid, 10), "the decoder process outlived its actor"


def test_a_decoder_whose_actor_is_gone_mid_decode_ends_quietly() -> None:
    # A transcriber killed mid-decode: the decoder's reply meets a closed pipe. It ends
    # without a traceback in the tree's log (seen: three per kill in bench.speech).
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.transcriber.engines.sphinx_worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert worker.stdin is not None and worker.stdout is not None
    assert msgpack.unpackb(worker.stdout.read(len(msgpack.packb({"ready": True})))) == {
        "ready": True
    }
    worker.stdout.close()  # the actor is gone: nobody reads the reply
    pcm = np.zeros(16000, dtype="<i2").tobytes()  # a second of 16 kHz s16le silence
    worker.stdin.write(msgpack.packb([pcm, True]))
    worker.stdin.close()
    assert worker.stderr is not None
    err = worker.stderr.read()  # until it exits
    worker.wait(timeout=30)
    assert b"Traceback" not in err, err.decode()
    assert worker.returncode == 0
