"""Several WebSocket frames in one write (services/gateway/session.py's Framer)."""

from __future__ import annotations

import struct

from services.gateway.session import Framer


def parse(data: bytes) -> list[tuple[int, str]]:
    """Server frames (RFC 6455 section 5.2, unmasked): (first byte, text) each."""
    frames = []
    while data:
        first, length = data[0], data[1]
        assert not length & 0x80, "a server's frame is never masked"
        at = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            at = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            at = 10
        frames.append((first, data[at : at + length].decode()))
        data = data[at + length :]
    return frames


def test_texts_become_whole_final_text_frames_in_order() -> None:
    # The three lengths of a frame header: 7 bits, 16 bits, 64 bits.
    texts = ['{"status": "received"}', "é" * 100, "x" * 70_000]
    data = Framer().text(texts)
    assert parse(data) == [(0x81, text) for text in texts]  # FIN + text opcode


def test_each_call_gives_only_its_own_frames() -> None:
    framer = Framer()
    framer.text(["first"])
    assert parse(framer.text(["second"])) == [(0x81, "second")]
