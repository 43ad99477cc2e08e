"""A whisper engine decodes on the cores it was given, no more.

Two transcribers share the cores (`cpu_share`): one whose idle threads spin takes the
other's. numpy's BLAS (the mel filter bank) left at its default spun a second thread
after every call: a transcriber with one decoder thread burnt 1.8 CPU seconds a
second of decoding, at no gain in speed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

# Decoding one thread's work: CPU time at most wall time, plus what the interpreter's
# other threads (none busy) and the clocks' grain add.
BOUND = 1.25
ROOT = Path(__file__).parent.parent.parent

DECODE = textwrap.dedent("""
    import time
    import numpy as np
    from services.transcriber.engines.model_store import default_cache_dir, packaged_model
    from services.transcriber.engines.whisper import WhisperEngine
    from tests.speech import sentence

    engine = WhisperEngine(str(packaged_model(default_cache_dir())), threads=1)
    audio = [sentence(i, True).astype(np.float32) / 32768 for i in (1, 2, 3, 4)]
    engine.transcribe(audio[0], False)  # first use: allocations
    cpu, wall = time.process_time(), time.perf_counter()
    for a in audio:
        for cut in range(16000, len(a), 8000):
            engine.transcribe(a[:cut], False)
        engine.transcribe(a, True)
    print((time.process_time() - cpu) / (time.perf_counter() - wall))
""")


def test_a_one_thread_whisper_engine_uses_one_core() -> None:
    # In a process of its own: the BLAS limit is the process's, as in a transcriber.
    out = subprocess.run([sys.executable, "-c", DECODE], capture_output=True, text=True,
                         check=True, timeout=100, cwd=ROOT)  # fmt: skip
    ratio = float(out.stdout.split()[-1])
    assert ratio <= BOUND, f"{ratio:.2f} CPU seconds a second of decoding on one thread"
