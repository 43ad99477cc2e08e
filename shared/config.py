"""hark's one settings object.

Built once at each entry point (`Settings.from_env()`, then CLI flags applied with
`dataclasses.replace`) and passed down. The supervisor hands its settings to the
actors it starts through the same environment variables (`to_env()`), so every
process of a tree agrees on them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

ENGINES = ("mock", "whisper", "sphinx")
BACKENDS = ("process", "docker")
LOG_FORMATS = ("text", "json")
DEVICES = ("cpu", "cuda", "auto")
WHISPER_DECODERS = ("batched", "faster-whisper")
# CTranslate2's weight types (a GPU takes the float ones; the CPU converts what it lacks).
COMPUTE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16",
                 "float16", "bfloat16", "float32", "default", "auto")  # fmt: skip
# More than this would hold the audio that comes during the wait back as long (HARK_BATCH_WAIT).
MAX_BATCH_WAIT_S = 0.1
# More than this would hold back the acks a client paces its audio by (HARK_ACK_WAIT).
MAX_ACK_WAIT_S = 0.1
# Audio encodings clients may send, and their bytes per sample.
SAMPLE_WIDTHS = {"pcm_s16le": 2, "pcm_f32le": 4}
# What `diarize=true` needs, as the gateway and the transcribers say when it is missing.
DIARIZE_EXTRA = "hark's diarize extra: .venv/bin/pip install -e '.[diarize]' -c constraints.txt"


def diarize_available() -> bool:
    """Whether the diarize extra (services/transcriber/speakers.py) is installed here."""
    return importlib.util.find_spec("resemblyzer") is not None


class SettingsError(ValueError):
    """A setting has a value hark cannot use; the message names the setting."""


@dataclass(frozen=True)
class EnvVar:
    """Where a setting comes from: its HARK_ name and the original service's alias."""

    name: str
    alias: str | None = None


def _env(name: str, alias: str | None = None) -> dict[str, Any]:
    return {"env": EnvVar(name, alias)}


# Settings never shown as they are (repr, /config, `hark config`).
SECRETS = ("admin_token", "api_keys")


@dataclass(frozen=True)
class Settings:
    """Every setting of a hark tree. Field metadata names the environment variable."""

    host: str = field(default="127.0.0.1", metadata=_env("HARK_HOST"))
    port: int = field(default=8000, metadata=_env("HARK_PORT", "APP_PORT"))
    # vosk-server protocol on every path of this port too (vosk clients are often
    # hard-wired to ws://localhost:2700); None: only /vosk on the gateway port.
    vosk_port: int | None = field(default=None, metadata=_env("HARK_VOSK_PORT"))
    status_host: str = field(default="127.0.0.1", metadata=_env("HARK_STATUS_HOST"))
    status_port: int = field(default=8001, metadata=_env("HARK_STATUS_PORT"))
    transcribers: int = field(default=2, metadata=_env("HARK_TRANSCRIBERS"))
    engine: str = field(default="whisper", metadata=_env("HARK_ENGINE"))
    # None: `hark up` starts an embedded redis-server on a Unix socket of its own.
    redis_url: str | None = field(default=None, metadata=_env("HARK_REDIS_URL", "REDIS_URL"))
    max_chunk_bytes: int = field(
        default=1024 * 1024, metadata=_env("HARK_MAX_CHUNK_BYTES", "MAX_AUDIO_SIZE")
    )
    log_level: str = field(default="INFO", metadata=_env("HARK_LOG_LEVEL", "LOG_LEVEL"))
    log_format: str = field(default="text", metadata=_env("HARK_LOG_FORMAT"))
    # Required (as a bearer token) by the endpoints that change something (restart, drain,
    # scale, ending a session) or read sessions and the audit log. None: `hark up` makes
    # one up (shared.auth.admin_token_path); an app built without one lets loopback in.
    admin_token: str | None = field(default=None, metadata=_env("HARK_ADMIN_TOKEN"))
    # API keys the gateway's clients must present ("name:key" or "key", comma-separated),
    # and/or a file of them, one a line. None of either: the gateway is open to anyone
    # who reaches its port (`hark up` says so).
    api_keys: str | None = field(default=None, metadata=_env("HARK_API_KEYS"))
    api_keys_file: str | None = field(default=None, metadata=_env("HARK_API_KEYS_FILE"))
    # How long a browser token from POST /token is good for (seconds).
    token_ttl: float = field(default=300.0, metadata=_env("HARK_TOKEN_TTL"))
    # Origins a browser connection may come from ("https://a.example,https://b.example");
    # None: any. Connections without an Origin header (native clients) are not affected.
    allowed_origins: str | None = field(default=None, metadata=_env("HARK_ALLOWED_ORIGINS"))
    # Where the supervisor runs the actors: local processes, or Docker containers.
    backend: str = field(default="process", metadata=_env("HARK_BACKEND"))
    # The Docker Engine API (None: DOCKER_HOST, else /var/run/docker.sock), the image the
    # actor containers run and the network they join (the compose file sets both).
    docker_url: str | None = field(default=None, metadata=_env("HARK_DOCKER_URL"))
    docker_image: str = field(default="hark:latest", metadata=_env("HARK_DOCKER_IMAGE"))
    docker_network: str | None = field(default=None, metadata=_env("HARK_DOCKER_NETWORK"))
    # Where the gateway container's ports are published on the Docker host.
    docker_publish_host: str = field(default="127.0.0.1", metadata=_env("HARK_DOCKER_PUBLISH_HOST"))
    heartbeat_interval: float = field(default=1.0, metadata=_env("HARK_HEARTBEAT_INTERVAL"))
    heartbeat_misses: int = field(default=3, metadata=_env("HARK_HEARTBEAT_MISSES"))
    shutdown_timeout: float = field(default=5.0, metadata=_env("HARK_SHUTDOWN_TIMEOUT"))
    # How long a stopping gateway waits for in-flight results; inside the shutdown timeout.
    # None: 60 % of it (see `drain_seconds`).
    drain_timeout: float | None = field(default=None, metadata=_env("HARK_DRAIN_TIMEOUT"))
    restart_intensity: int = field(default=5, metadata=_env("HARK_RESTART_INTENSITY"))
    restart_period: float = field(default=10.0, metadata=_env("HARK_RESTART_PERIOD"))
    backoff_min: float = field(default=0.1, metadata=_env("HARK_BACKOFF_MIN"))
    backoff_max: float = field(default=30.0, metadata=_env("HARK_BACKOFF_MAX"))
    # The whisper engine's model: a CTranslate2 model directory, or a hub name (then, and
    # only then, faster-whisper may download). None: the Whisper base model packages.
    whisper_model: str | None = field(default=None, metadata=_env("HARK_WHISPER_MODEL"))
    # The model of partials in the languages it knows (a directory or hub name, as
    # above); "main": the model above; None: Whisper tiny.en, where its package is
    # installed (about half a partial's cost: bench/RESULTS.md, issue 22).
    partial_model: str | None = field(default=None, metadata=_env("HARK_PARTIAL_MODEL"))
    language: str = field(default="en", metadata=_env("HARK_LANGUAGE"))
    partial_interval: float = field(default=1.0, metadata=_env("HARK_PARTIAL_INTERVAL"))
    # Seconds of silence that end an utterance (its final is decoded then).
    end_silence: float = field(default=0.6, metadata=_env("HARK_END_SILENCE"))
    # Where the whisper model runs (cpu, or cuda where CTranslate2 finds a GPU), its
    # weights' type (int8 on the CPU; float16 or int8_float16 suit a GPU), threads for one
    # transcriber's model (0: the cores shared among the transcribers), and how many
    # sessions' utterances one pass through the model takes at most (None: 8 on a GPU, 1
    # on the CPU, where a batch saves little and each of its jobs waits for the whole:
    # see GPU_BATCH in the whisper engine).
    device: str = field(default="cpu", metadata=_env("HARK_DEVICE"))
    compute_type: str = field(default="int8", metadata=_env("HARK_COMPUTE_TYPE"))
    whisper_threads: int = field(default=0, metadata=_env("HARK_WHISPER_THREADS"))
    batch_size: int | None = field(default=None, metadata=_env("HARK_BATCH_SIZE"))
    # batched: hark's own passes through the model (input sized to the audio, several
    # sessions at once); faster-whisper: the library's decoding, 30 s windows, one
    # utterance at a time, with its temperature fallbacks (what hark did before).
    whisper_decoder: str = field(default="batched", metadata=_env("HARK_WHISPER_DECODER"))
    cache_dir: str | None = field(default=None, metadata=_env("HARK_CACHE_DIR"))
    session_queue: int = field(default=256, metadata=_env("HARK_SESSION_QUEUE"))
    # The largest file POST /v1/audio/transcriptions takes (OpenAI's own limit: 25 MB).
    max_file_bytes: int = field(default=25 * 1024 * 1024, metadata=_env("HARK_MAX_FILE_BYTES"))
    # Admission control. A gateway holds at most this many sessions; more get HTTP 503.
    max_sessions: int = field(default=10_000, metadata=_env("HARK_MAX_SESSIONS"))
    # Seconds a connection may take to send its whole HTTP request (the WebSocket
    # handshake): half-sent ones are closed rather than holding a descriptor.
    handshake_timeout: float = field(default=10.0, metadata=_env("HARK_HANDSHAKE_TIMEOUT"))
    # A mailbox entry read this many times (a transcriber that crashed or hung on it,
    # over and over) goes to the dead-letter stream instead of being read once more.
    max_deliveries: int = field(default=5, metadata=_env("HARK_MAX_DELIVERIES"))
    # Per API key and per client address (None: no limit): sessions open at once, audio
    # frames and bytes a second, and how long (seconds) one session may last.
    limit_sessions: int | None = field(default=None, metadata=_env("HARK_LIMIT_SESSIONS"))
    limit_chunks_per_s: float | None = field(default=None, metadata=_env("HARK_LIMIT_CHUNKS_PER_S"))
    limit_bytes_per_s: float | None = field(default=None, metadata=_env("HARK_LIMIT_BYTES_PER_S"))
    limit_session_s: float | None = field(default=None, metadata=_env("HARK_LIMIT_SESSION_S"))
    # How far behind (seconds) a transcriber may fall reading its mailbox: past it, it
    # gets no new sessions (all behind: HTTP 503); past twice it, its sessions' audio
    # is refused with `overloaded` until it catches up. Bounds queueing and latency.
    max_lag: float = field(default=2.0, metadata=_env("HARK_MAX_LAG"))
    # The share of its time a transcriber's engine may spend decoding once it takes one
    # more session, at what its sessions cost it now: past it, no new session goes there
    # (all past it: HTTP 503), so those it has keep their latency.
    max_busy: float = field(default=0.7, metadata=_env("HARK_MAX_BUSY"))
    # The same for the gateway itself: how long (seconds) audio it has read may wait to be
    # stored in Redis. A gateway short of CPU falls behind here; past it, no new sessions
    # (HTTP 503); past twice it, the sessions sending the most are closed with `session_shed`.
    max_store_lag: float = field(default=0.25, metadata=_env("HARK_MAX_STORE_LAG"))
    # How long (seconds) a transcriber lets its mailbox fill after a read that found less
    # than a full batch (that round's results already sent), before it reads again:
    # fewer, fuller round trips to Redis, for at most this much more latency. 0: at once.
    batch_wait: float = field(default=0.002, metadata=_env("HARK_BATCH_WAIT"))
    # How long (seconds) the gateway lets a chunk's ack wait for the session's next
    # reply (its transcript, most often), so both go out in one write. 0: at once.
    ack_wait: float = field(default=0.02, metadata=_env("HARK_ACK_WAIT"))
    audit_maxlen: int = field(default=100_000, metadata=_env("HARK_AUDIT_MAXLEN"))
    results_maxlen: int = field(default=1000, metadata=_env("HARK_RESULTS_MAXLEN"))
    results_ttl: int = field(default=3600, metadata=_env("HARK_RESULTS_TTL"))

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError naming the first setting that cannot work."""
        for name in ("port", "status_port", "vosk_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise SettingsError(f"{_var(name)}={value}: a port is 0..65535")
        positive = (
            "transcribers", "max_chunk_bytes", "heartbeat_interval", "heartbeat_misses",
            "shutdown_timeout", "restart_period", "partial_interval", "backoff_min", "backoff_max",
            "session_queue", "max_file_bytes", "max_sessions", "handshake_timeout", "max_lag",
            "max_store_lag", "audit_maxlen",
            "results_maxlen", "results_ttl", "token_ttl", "max_deliveries",
            "limit_sessions", "limit_chunks_per_s", "limit_bytes_per_s", "limit_session_s",
            "batch_size", "end_silence", "max_busy",
        )  # fmt: skip
        for name in positive:  # None, where allowed, is not given: nothing to check
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SettingsError(f"{_var(name)}={value}: must be > 0")
        if self.limit_bytes_per_s is not None and self.limit_bytes_per_s < self.max_chunk_bytes:
            raise SettingsError("HARK_LIMIT_BYTES_PER_S must be at least HARK_MAX_CHUNK_BYTES "
                                "(a largest frame could never pass)")  # fmt: skip
        for name, most in (("batch_wait", MAX_BATCH_WAIT_S), ("ack_wait", MAX_ACK_WAIT_S)):
            value = getattr(self, name)
            if not 0 <= value <= most:
                raise SettingsError(f"{_var(name)}={value}: 0 to {most:g} s")
        for name in ("restart_intensity", "whisper_threads"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{_var(name)}: must be >= 0")
        for name, allowed in (("engine", ENGINES), ("backend", BACKENDS),
                              ("log_format", LOG_FORMATS), ("device", DEVICES),
                              ("compute_type", COMPUTE_TYPES),
                              ("whisper_decoder", WHISPER_DECODERS)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise SettingsError(
                    f"{_var(name)}={getattr(self, name)!r}: one of {', '.join(allowed)}"
                )
        if self.admin_token is not None and len(self.admin_token) < 16:
            raise SettingsError("HARK_ADMIN_TOKEN: at least 16 characters")
        if self.drain_timeout is not None and not 0 < self.drain_timeout < self.shutdown_timeout:
            raise SettingsError(
                "HARK_DRAIN_TIMEOUT must be > 0 and less than HARK_SHUTDOWN_TIMEOUT"
            )
        if not 0 < self.max_busy <= 1:
            raise SettingsError(f"HARK_MAX_BUSY={self.max_busy}: a share of the time, 0 to 1")
        if self.backoff_min > self.backoff_max:
            raise SettingsError("HARK_BACKOFF_MIN must not exceed HARK_BACKOFF_MAX")
        if self.backend == "docker" and self.redis_url is None:
            raise SettingsError(
                "HARK_BACKEND=docker needs HARK_REDIS_URL: a Redis the actor containers "
                "can reach (the embedded one listens on a Unix socket on this machine)"
            )
        if self.redis_url is not None:
            scheme = urlsplit(self.redis_url).scheme
            if scheme not in ("redis", "rediss", "unix"):
                raise SettingsError(
                    f"HARK_REDIS_URL: scheme {scheme!r} is not redis://, rediss:// or unix://"
                )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Settings from HARK_* variables (or the original service's aliases), then
        `overrides` (command-line flags, by field name), checked together."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var: EnvVar = f.metadata["env"]
            raw = env.get(var.name)
            if raw is None and var.alias is not None:
                raw = env.get(var.alias)
            if raw is None or raw == "":
                continue
            values[f.name] = _parse(f, var.name, raw)
        return cls(**{**values, **(overrides or {})})

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env()` in a child rebuild these settings."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.metadata["env"].name] = str(value)
        return out

    @property
    def drain_seconds(self) -> float:
        """The drain timeout in force: HARK_DRAIN_TIMEOUT, else 60 % of the shutdown timeout."""
        if self.drain_timeout is not None:
            return self.drain_timeout
        return 0.6 * self.shutdown_timeout

    def transcriber_names(self) -> list[str]:
        return [f"transcriber-{i}" for i in range(self.transcribers)]

    def __repr__(self) -> str:
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "redis_url" and value is not None:
                value = redact_url(value)
            elif f.name in SECRETS and value is not None:
                value = "***"
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"

    def public(self) -> dict[str, Any]:
        """The settings as JSON-safe values with secrets redacted."""
        out = dataclasses.asdict(self)
        if self.redis_url is not None:
            out["redis_url"] = redact_url(self.redis_url)
        for name in SECRETS:
            if out[name] is not None:
                out[name] = "***"
        return out


def redact_url(url: str) -> str:
    """The URL with every credential redis-py would take from it replaced by '***': the
    password of `user:password@`, a lone `secret@` (some read it as a password), and
    the `password` query option (`unix:///p/redis.sock?password=...`)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key.lower() == "password" for key, _ in pairs):
            query = urlencode([(k, "***" if k.lower() == "password" else v) for k, v in pairs],
                              safe="*/")  # fmt: skip
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # Not urlunsplit: it drops the empty authority of `unix:///path`.
    out = f"{parts.scheme}://{netloc}{parts.path}" if parts.scheme else f"{netloc}{parts.path}"
    return out + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def _var(name: str) -> str:
    for f in dataclasses.fields(Settings):
        if f.name == name:
            env: EnvVar = f.metadata["env"]
            return env.name
    raise KeyError(name)


def _parse(f: dataclasses.Field[Any], var: str, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind in ("int", "int | None"):
            return int(raw)
        if kind in ("float", "float | None"):
            return float(raw)
    except ValueError:
        noun = "an integer" if kind.startswith("int") else "a number"
        raise SettingsError(f"{var}={raw!r}: not {noun}") from None
    if var.endswith("LOG_LEVEL"):
        return raw.upper()
    if var in ("HARK_LOG_FORMAT", "HARK_BACKEND", "HARK_ENGINE"):
        return raw.lower()
    return raw
