"""pocketsphinx in a process of its own, driven by the sphinx engine over a pipe.

pocketsphinx's decoder holds the GIL for the whole of a decode (0.75 s for 4 s of
speech on a 2-core machine, 0.7 s for the final search of 20 s alone), so in the
actor's process it stalled the message loop, the heartbeat with it: a burst of
audio got a healthy sphinx transcriber killed as HUNG. Here it blocks nobody.

The protocol is msgpack on stdin and stdout: one `[pcm, final]` request (16 kHz
s16le bytes) at a time, answered by `{"text": ..., "words": [...]}` or
`{"error": ...}`; `{"ready": true}` first, once the model is loaded. It exits when
its stdin closes, which is also what happens when the actor dies, however it dies.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import Any, BinaryIO

import msgpack
from pocketsphinx import Decoder

RATE = 16_000
FRAMES_PER_S = 100  # pocketsphinx's default frame rate


def transcribe(decoder: Decoder, pcm: bytes, final: bool) -> dict[str, Any]:
    """The text of one utterance, and for a final its words (times in its audio)."""
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    if hyp is None:
        return {"text": "", "words": []}
    words = []
    if final:
        for seg in decoder.seg():
            # Markers (<s>, <sil>, [NOISE]) are no words; "word(2)" is a variant.
            if seg.word.startswith(("<", "[")):
                continue
            words.append([seg.word.split("(")[0], round(seg.start_frame / FRAMES_PER_S, 3),
                          round((seg.end_frame + 1) / FRAMES_PER_S, 3),
                          round(float(seg.prob), 3)])  # fmt: skip
    return {"text": str(hyp.hypstr), "words": words}


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """Answer requests until `requests` ends."""
    decoder = Decoder(samprate=RATE)
    replies.write(msgpack.packb({"ready": True}))
    replies.flush()
    for pcm, final in msgpack.Unpacker(requests, use_list=False):
        try:
            reply = transcribe(decoder, pcm, final)
        except Exception as exc:  # said to the actor, which raises it
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        replies.write(msgpack.packb(reply))
        replies.flush()


def main() -> None:
    # Ctrl-C in `hark up`'s terminal reaches the whole process group: the actor
    # stops, and this ends with its stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)  # not pocketsphinx's INFO lines
    # Unbuffered: a buffered read would wait for more than one request's bytes.
    with open(sys.stdin.fileno(), "rb", buffering=0, closefd=False) as requests:
        try:
            serve(requests, sys.stdout.buffer)
        except BrokenPipeError:
            # The actor went (killed mid-decode): nobody to answer, nothing to say.
            # stdout is closed first so the exit does not flush into the broken pipe.
            os.close(sys.stdout.fileno())


if __name__ == "__main__":
    main()
