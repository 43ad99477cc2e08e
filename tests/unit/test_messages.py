"""The msgpack wire messages: round trips, the version field, malformed payloads."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from shared.messages import (
    VERSION,
    ActorError,
    AudioChunk,
    Flushed,
    Heartbeat,
    Message,
    MessageError,
    SessionControl,
    Transcript,
    decode,
    decode_as,
)

SAMPLES: list[Message] = [
    AudioChunk("s1", "c1", 7, b"\x00\x01" * 10, "pcm_s16le", 16000, 1.25),
    SessionControl("s1", "c1", 7, "close"),
    Transcript("s1", "c1", 7, "hello", True, "transcriber-0", 1.25),
    Flushed("s1", "c1", 7, "finalize"),
    ActorError("s1", "c1", 7, "bad_audio", "odd byte count"),
    Heartbeat("transcriber-0", 123, "transcriber", "running", 3, "0.1.0", 10.5, 9.0),
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.KIND)
def test_every_kind_survives_a_msgpack_round_trip(msg: Message) -> None:
    assert decode(msg.encode()) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: m.KIND)
def test_encoded_message_carries_version_and_kind(msg: Message) -> None:
    raw = msgpack.unpackb(msg.encode())
    assert raw["v"] == VERSION
    assert raw["kind"] == msg.KIND


def test_audio_bytes_stay_binary() -> None:
    chunk = AudioChunk("s", "c", 1, bytes(range(256)), "pcm_s16le", 16000, 0.0)
    assert decode_as(AudioChunk, chunk.encode()).data == bytes(range(256))


def _packed(**fields: object) -> bytes:
    base = dataclasses.asdict(SAMPLES[1]) | {"v": VERSION, "kind": "control"}
    base.update(fields)
    return msgpack.packb({k: v for k, v in base.items() if v is not _DROP}, use_bin_type=True)


_DROP = object()


@pytest.mark.parametrize(
    ("payload", "complaint"),
    [
        (b"\xc1", "not msgpack"),
        (msgpack.packb([1, 2, 3]), "not a map"),
        (_packed(v=VERSION + 1), "unsupported version"),
        (_packed(v=_DROP), "unsupported version"),
        (_packed(kind="nonsense"), "unknown kind"),
        (_packed(kind=5), "unknown kind"),
        (_packed(seq=_DROP), "missing field 'seq'"),
        (_packed(seq="7"), "control.seq: expected int"),
        (_packed(seq=True), "control.seq: expected int"),
        (_packed(op=b"close"), "control.op: expected str"),
    ],
    ids=["garbage", "list", "future-version", "no-version", "unknown-kind", "kind-not-str",
         "missing-field", "str-for-int", "bool-for-int", "bytes-for-str"],
)  # fmt: skip
def test_malformed_payload_is_rejected_with_a_reason(payload: bytes, complaint: str) -> None:
    with pytest.raises(MessageError, match=complaint):
        decode(payload)


def test_decode_as_rejects_the_wrong_kind() -> None:
    with pytest.raises(MessageError, match="expected 'heartbeat'"):
        decode_as(Heartbeat, SAMPLES[0].encode())


def test_float_fields_accept_integers_from_other_senders() -> None:
    raw = msgpack.unpackb(SAMPLES[0].encode())
    raw["received_at"] = 3
    assert decode_as(AudioChunk, msgpack.packb(raw, use_bin_type=True)).received_at == 3


def test_an_encode_that_fails_leaves_nothing_behind_for_the_next() -> None:
    # Each thread reuses one msgpack packer: a failed pack must not leave half a message in it.
    bad = Transcript("s1", "c1", 7, "hello", True, "transcriber-0", 1.25, words=[[object()]])
    with pytest.raises(TypeError):
        bad.encode()
    assert decode(SAMPLES[2].encode()) == SAMPLES[2]
