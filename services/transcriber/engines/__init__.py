"""The engine interface: what a transcriber needs from a speech recogniser.

An engine opens one `EngineSession` per client session. The session takes audio
chunks in seq order (`feed`, cheap: decoding, resampling, voice activity) and the
ends of utterances (`flush`); what costs time, the recognition, it owes as `Job`s
that the actor's scheduler runs when it chooses: the oldest final first, a partial
only of the newest state of an utterance. `committed_seq` tells the actor which
chunks are covered by a final already returned, so it can XACK them and no
earlier. Replaying un-acked chunks into a fresh session after a crash must
rebuild the same state: engines keep no state outside their sessions.

Adding an engine is one module here plus a line in `create_engine`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from shared.config import Settings

Word = tuple[str, float, float, float]  # text, start s, end s, probability


# Events a session's voice activity raises (see Result.event).
SPEECH_STARTED = "speech_started"
UTTERANCE_END = "utterance_end"


@dataclass(frozen=True, slots=True)
class Options:
    """What a client chose for its session; the engine's defaults where it did not.

    `language`: a language code the engine knows, "auto" to detect it per utterance,
    None for the engine's own. `prompt`: text that came before (spelling, style,
    context); `hotwords`: words and names to expect. An engine that cannot honour an
    option refuses the session (BadInput with code `bad_setting`) rather than
    ignore it silently; `prompt` and `hotwords` it may take as hints only.
    """

    end_silence: float | None = None  # seconds of silence that end an utterance
    language: str | None = None
    prompt: str = ""
    hotwords: str = ""
    diarize: bool = False  # each final's voice is embedded (services/transcriber/speakers.py)


DEFAULT_OPTIONS = Options()


@dataclass(frozen=True, slots=True)
class Result:
    """A transcript: `seq` is the last chunk it covers; times in seconds of the stream.

    With `event` set it is no transcript but a voice-activity event of the stream
    (SPEECH_STARTED at `start`, UTTERANCE_END at `end`): no text, nothing committed.
    `language`: the language the engine heard, where the client asked it to detect one.
    """

    seq: int
    text: str
    final: bool
    start: float | None = None
    end: float | None = None
    words: tuple[Word, ...] = ()
    language: str | None = None
    event: str = ""
    voice: Any = None  # the utterance's voice embedding, where the session diarizes


class Decoded(NamedTuple):
    """A recogniser's output for one utterance: times of words relative to its audio."""

    text: str
    words: list[Word]
    language: str | None = None  # what it detected, where it was asked to
    voice: Any = None  # the speaker's voice embedding (the actor adds it; see speakers.py)


@dataclass(slots=True)
class Job:
    """Recognition a session owes. `run` is the costly part (a blocking engine's runs in
    a thread, touching no session state); `finish` takes its output back on the event
    loop and returns the results to publish. `since`: when the work became owed
    (monotonic seconds), so the oldest is served first and its wait is the lag."""

    final: bool
    since: float
    run: Callable[[], Any]
    finish: Callable[[Any], list[Result]]
    audio: Any = None  # what `run` decodes, for an engine that decodes jobs in batches
    options: Options = DEFAULT_OPTIONS  # its session's, for a batch of several sessions
    ready: Any = None  # what `run` gives, known already (a final decoded ahead of its cut)
    hurried: bool = False  # a final that others wait behind (see EngineSession.final_job)


class BadInput(ValueError):
    """Audio (or a setting) the engine cannot use; `code` is the client-facing error code."""

    code = "bad_audio"


class BadSetting(BadInput):
    """A session option the engine cannot honour."""

    code = "bad_setting"


class EngineUnavailable(RuntimeError):
    """The engine cannot run here; the message says what to install or set."""


class EngineSession(Protocol):
    """The recognition state of one client session."""

    @property
    def committed_seq(self) -> int:
        """Every chunk with seq <= this is covered by a final already returned."""
        ...

    def feed(self, seq: int, audio: bytes, start_s: float) -> list[Result]:
        """Chunk `seq`, which starts `start_s` seconds into the stream: cheap. The results
        ready at once (an engine without a model); recognition is owed as jobs."""
        ...

    def flush(self) -> list[Result]:
        """End the current utterance now (cheap): its final is owed as a job, or is
        among the results when ready at once."""
        ...

    @property
    def finals_cut(self) -> int:
        """Finals owed or returned so far: a flush is answered once `finals_done`
        reaches what this was when it came."""
        ...

    @property
    def finals_done(self) -> int:
        """Finals returned so far (by `feed`, `flush` or a job's `finish`)."""
        ...

    def final_since(self) -> float | None:
        """When the final `final_job` would hand out became owed (or, for an utterance
        whose end is settled but not yet cut, could be decoded ahead); None if none."""
        ...

    def final_job(self, hurry: bool = False) -> Job | None:
        """The oldest final owed, unless one of this session is being decoded already
        (finals leave in order); None when none is owed. `hurry`: other finals wait
        behind it, so the engine may decode it faster at some cost in accuracy (whisper:
        a greedy search instead of the beam), if its audio comes live (`Job.hurried`
        says whether it did)."""
        ...

    def partial_since(self, early: float = 0.0) -> float | None:
        """When this session last had a partial (or its utterance began), if one is due
        now (or would be within `early` seconds of audio; an engine may hold an
        utterance's first to its own time); else None."""
        ...

    def partial_job(self, early: float = 0.0) -> Job | None:
        """A partial of the utterance as it stands now, if one is due (within `early`);
        None otherwise."""
        ...


class Engine(Protocol):
    """A recogniser, loaded once per actor, shared by its sessions.

    An engine may also have `batch_size` (more than 1) and `run_batch(jobs)`, the
    outputs of several sessions' jobs in one pass (what each job's `run` would give),
    and `languages`: the language codes a session may ask for (absent or empty: any;
    gateways refuse another at the handshake, `open_session` with BadSetting too), and
    `partials_apart`: True where partials are decoded by a model of their own, which
    a thread may run beside the finals' (the transcriber then decodes a partial that
    would miss its cadence while finals decode).
    """

    name: str
    blocking: bool  # True: calls take long (model inference) and run off the event loop

    def open_session(
        self, session_id: str, encoding: str, sample_rate: int,
        options: Options = DEFAULT_OPTIONS,
    ) -> EngineSession:  # fmt: skip
        """A session of audio in `encoding` at `sample_rate`, with the client's `options`
        (BadSetting for one the engine cannot honour)."""
        ...


class Immediate:
    """A base for sessions whose results are all ready at once (no model): they owe no
    jobs, so every final cut is done."""

    finals_cut = 0
    finals_done = 0

    def final_since(self) -> float | None:
        return None

    def final_job(self, hurry: bool = False) -> Job | None:
        return None

    def partial_since(self, early: float = 0.0) -> float | None:
        return None

    def partial_job(self, early: float = 0.0) -> Job | None:
        return None


def drain(session: EngineSession) -> list[Result]:
    """Run every final `session` owes, in order, here and now (tools and tests that
    drive an engine without an actor)."""
    results: list[Result] = []
    while (job := session.final_job()) is not None:
        results += job.finish(job.run())
    return results


def create_engine(settings: Settings) -> Engine:
    """The engine the settings name; a missing dependency is reported here, at start."""
    if settings.engine == "mock":
        from services.transcriber.engines.mock import MockEngine

        return MockEngine()
    if settings.engine == "whisper":
        try:
            from services.transcriber.engines.whisper import WhisperEngine
        except ImportError as exc:
            raise EngineUnavailable(
                f"the whisper engine needs its extra ({exc.name} is missing): "
                "pip install -e '.[whisper]'"
            ) from None
        return WhisperEngine.from_settings(settings)
    if settings.engine == "sphinx":
        try:
            from services.transcriber.engines.sphinx import SphinxEngine
        except ImportError as exc:
            raise EngineUnavailable(
                f"the sphinx engine needs its extra ({exc.name} is missing): "
                "pip install -e '.[sphinx]'"
            ) from None
        return SphinxEngine.from_settings(settings)
    raise EngineUnavailable(f"unknown engine {settings.engine!r}")
