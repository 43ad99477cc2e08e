"""Messages between actors: msgpack maps with a version and a kind, one class per kind.

Every message encodes to `{"v": VERSION, "kind": <kind>, <fields>...}`. `decode()`
checks the version, the kind and every field's type, so a malformed payload from
Redis becomes a `MessageError` at the edge instead of an AttributeError deep in
an actor. Clients never see these: they speak JSON to the gateway.

Messages are values: built once, never assigned to. They are not frozen dataclasses
all the same: a frozen one's `__init__` costs ~1 µs more (each field set through
`object.__setattr__`), and a chunk's path builds four of them.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import msgpack

from shared.config import SAMPLE_WIDTHS

VERSION = 1


class MessageError(ValueError):
    """A payload is not a valid hark message of a known kind and version."""


M = TypeVar("M", bound="Message")

_KINDS: dict[str, type[Message]] = {}
# Field types allowed on the wire, exactly (msgpack makes no subclasses, and a bool where a
# number belongs is a bug at the sender); `float` takes ints too, since msgpack keeps 1.0 as
# a float but a peer in another language may send 1.
_TYPES: dict[str, frozenset[type]] = {
    "str": frozenset({str}),
    "int": frozenset({int}),
    "float": frozenset({float, int}),
    "bool": frozenset({bool}),
    "bytes": frozenset({bytes}),
    "str | None": frozenset({str, type(None)}),
    "float | None": frozenset({float, int, type(None)}),
    "list[Any]": frozenset({list, tuple}),
}


@dataclass(slots=True)
class Message:
    """Base of every wire message. Subclasses set KIND and declare typed fields."""

    KIND: ClassVar[str] = ""

    def __init_subclass__(cls) -> None:
        if cls.KIND:
            # dataclass(slots=True) builds a second class of the same name: that one replaces
            # the first; a different class claiming a taken kind is a bug.
            known = _KINDS.get(cls.KIND)
            if known is not None and known.__qualname__ != cls.__qualname__:
                raise TypeError(f"message kind {cls.KIND!r} defined twice")
            _KINDS[cls.KIND] = cls

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": VERSION, "kind": self.KIND}
        for name, _, _, _ in _spec(type(self)):
            out[name] = getattr(self, name)
        return out

    def encode(self) -> bytes:
        packed: bytes = _packer().pack(self.to_dict())
        return packed


_THREAD = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's packer: reused, since `msgpack.packb` sets up a new one (and its
    buffer) every call, 0.45 µs of its 1 µs; not shared, since a packer is not
    thread-safe."""
    packer: msgpack.Packer | None = getattr(_THREAD, "packer", None)
    if packer is None:
        packer = _THREAD.packer = msgpack.Packer(use_bin_type=True)
    return packer


def decode(payload: bytes) -> Message:
    """The message in `payload`, or MessageError saying what is wrong with it."""
    try:
        data = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise MessageError(f"not msgpack: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError(f"not a map but {type(data).__name__}")
    version = data.get("v")
    if version != VERSION:
        raise MessageError(f"unsupported version {version!r} (this build speaks {VERSION})")
    kind = data.get("kind")
    cls = _KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise MessageError(f"unknown kind {kind!r}")
    return _build(cls, data)


def decode_as(cls: type[M], payload: bytes) -> M:
    """Like decode(), but the message must be of class `cls`."""
    msg = decode(payload)
    if not isinstance(msg, cls):
        raise MessageError(f"expected {cls.KIND!r}, got {msg.KIND!r}")
    return msg


# Per class: (name, declared type, allowed types, required) of each field. Worked out once, since
# dataclasses.fields() on every message is a measurable share of a hot path.
_Spec = tuple[tuple[str, str, frozenset[type], bool], ...]
_SPECS: dict[type, _Spec] = {}


def _spec(cls: type) -> _Spec:
    spec = _SPECS.get(cls)
    if spec is None:
        spec = tuple(
            (f.name, str(f.type), _TYPES[str(f.type)],
             f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        )  # fmt: skip
        _SPECS[cls] = spec
    return spec


def _build(cls: type[M], data: dict[str, Any]) -> M:
    values: dict[str, Any] = {}
    for name, declared, allowed, required in _spec(cls):
        value = data.get(name, _ABSENT)
        if value is _ABSENT:
            if required:
                raise MessageError(f"{cls.KIND}: missing field {name!r}")
            continue
        if type(value) not in allowed:
            got = type(value).__name__
            raise MessageError(f"{cls.KIND}.{name}: expected {declared}, got {got}")
        values[name] = value
    return cls(**values)


_ABSENT = object()


@dataclass(slots=True)
class AudioChunk(Message):
    """One accepted binary frame, gateway -> the session's transcriber mailbox."""

    KIND: ClassVar[str] = "chunk"
    session_id: str
    client_id: str
    seq: int
    data: bytes
    encoding: str
    sample_rate: int
    received_at: float  # gateway clock (time.time()) when the frame arrived
    start_s: float = 0.0  # seconds of the session's audio before this chunk
    # The session's options, on each chunk (a transcriber may first meet a session at
    # any chunk: after a restart, or a move). Empty or 0: the transcriber's default.
    end_silence: float = 0.0  # silence that ends an utterance
    language: str = ""  # a language code, or "auto"
    prompt: str = ""
    hotwords: str = ""
    diarize: bool = False  # speaker labels on its finals

    @property
    def seconds(self) -> float:
        """How much audio this chunk holds."""
        return len(self.data) / (SAMPLE_WIDTHS.get(self.encoding, 2) * self.sample_rate)


@dataclass(slots=True)
class SessionControl(Message):
    """A control step for a session, in the same mailbox so it is ordered with the audio.

    op: "finalize" (flush the utterance, keep going), "close" (flush, the client is
    leaving) or "end" (the connection is gone: drop the session's state).
    `seq` is the last audio seq sent before this control.
    """

    KIND: ClassVar[str] = "control"
    session_id: str
    client_id: str
    seq: int
    op: str
    # At a close of compressed audio: the end of the stream that the gateway's decoder
    # held back until it knew no more would come (in the format of the session's
    # chunks); it belongs to chunk `seq` and is heard before the flush.
    data: bytes = b""


@dataclass(slots=True)
class Transcript(Message):
    """A result, transcriber -> `transcripts:<client_id>` and `hark:results:{<session>}`.

    `seq` is the last audio chunk the text covers; a final commits every chunk up to it.
    """

    KIND: ClassVar[str] = "transcript"
    session_id: str
    client_id: str
    seq: int
    text: str
    final: bool
    actor: str
    received_at: float  # copied from the chunk, so the gateway can measure latency
    start: float | None = None  # seconds of the session's audio, where the engine says
    end: float | None = None
    words: list[Any] = dataclasses.field(default_factory=list)  # [text, start, end, prob]
    language: str | None = None  # the language heard, where the client asked to detect it
    speaker: str | None = None  # who said it ("S1", "S2", ...), where the client asked
    # Each word's speaker where more than one speaks in it (else: every word is speaker's).
    speakers: list[Any] = dataclasses.field(default_factory=list)


@dataclass(slots=True)
class SpeechEvent(Message):
    """Voice activity in a session's audio, transcriber -> `transcripts:<client_id>`:
    `event` "speech_started" (at `at`, seconds of the stream) or "utterance_end" (the
    end of speech that a silence ended). Hints, not stored: after a transcriber restart
    an event may come again (the gateway drops one it has sent)."""

    KIND: ClassVar[str] = "speech_event"
    session_id: str
    client_id: str
    seq: int  # the chunk it was heard in
    event: str
    at: float


@dataclass(slots=True)
class Flushed(Message):
    """The transcriber has handled a finalize/close control up to `seq`."""

    KIND: ClassVar[str] = "flushed"
    session_id: str
    client_id: str
    seq: int
    op: str


@dataclass(slots=True)
class ActorError(Message):
    """A problem with a session's audio that the client should hear about."""

    KIND: ClassVar[str] = "error"
    session_id: str
    client_id: str
    seq: int
    code: str
    error: str


@dataclass(slots=True)
class Heartbeat(Message):
    """The value of `hark:actor:<name>`, written from inside the actor's message loop."""

    KIND: ClassVar[str] = "heartbeat"
    name: str
    pid: int
    role: str
    state: str
    load: int  # sessions (transcriber) or connections (gateway) it holds now
    version: str
    ts: float
    started_at: float
    # Set by the supervisor's backend for each process or container it starts, so a
    # beat is matched to its incarnation (a pid inside a container says nothing).
    instance: str = ""
    # A transcriber's queueing delay: how long the oldest entry of its latest mailbox
    # read had waited, in ms (0 when it waits for work). Gateways refuse load past a limit.
    lag_ms: int = 0
    # A transcriber's share of the time its engine spent decoding, smoothed over its
    # last beats (0..1): with `load`, what one more session would cost it.
    busy: float = 0.0
    # A transcriber's decoding seconds per second of its sessions' audio over its last
    # half minute or so (0 until it has heard enough): what one more real-time session
    # would cost it, learnt from what its engine does.
    cost: float = 0.0
    # A transcriber's share of the finals it decoded in a hurry (a greedy search instead
    # of the beam, because others waited behind them: EngineSession.final_job), smoothed
    # over its last beats (0..1): above 0, its speakers trade a little accuracy for
    # latency, a sign the tree is near its capacity.
    hurried: float = 0.0
    # The language codes a transcriber's engine knows (whisper's, "auto" where it detects
    # them); empty: it takes any. Gateways refuse another at the handshake.
    languages: list[Any] = dataclasses.field(default_factory=list)


def unknown_language(language: str, known: Sequence[str]) -> str:
    """What a client is told of a language code the engine does not know."""
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return f"language {language!r} is not one the engine knows ({shown})"


@dataclass(slots=True)
class ActorDown(Message):
    """Supervisor -> `hark:control`: `name` stopped and will not be restarted (FATAL, EXITED).

    Gateways move that actor's sessions, with their uncommitted audio, to live actors.
    """

    KIND: ClassVar[str] = "actor_down"
    name: str
    reason: str
