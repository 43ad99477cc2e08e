"""Per-client limits: sessions at once, chunks and bytes a second, for each API key and
each client address alike (a key shared by many addresses, or many keys from one).

Each limit is off until its setting is given. Rates are token buckets that hold one
second's worth (a client may send a second of audio at once, not more), refilled
continuously; a frame over the rate is refused, not delayed, with how long to wait.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from shared.config import Settings


@dataclass
class Bucket:
    rate: float  # tokens a second, and the most it holds
    tokens: float
    at: float  # when `tokens` was counted

    def wait(self, amount: float, now: float) -> float:
        """Seconds until `amount` is there (0.0: it is)."""
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return max(0.0, (amount - self.tokens) / self.rate)


@dataclass
class Party:
    """One key's or one address's use: its sessions open and its buckets."""

    sessions: int = 0
    chunks: Bucket | None = None
    bytes: Bucket | None = None


@dataclass
class Lease:
    """A session's hold on its parties; `Limits.release` gives it back once."""

    parties: list[tuple[str, Party]] = field(default_factory=list)
    released: bool = False


class LimitExceeded(Exception):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class Limits:
    def __init__(self, settings: Settings) -> None:
        self.max_sessions = settings.limit_sessions
        self.chunks_per_s = settings.limit_chunks_per_s
        self.bytes_per_s = settings.limit_bytes_per_s
        self._parties: dict[str, Party] = {}

    def admit(self, key: str | None, address: str | None) -> Lease:
        """A lease for one more session of `key` (None: no keys) from `address`, or
        LimitExceeded when either already holds its limit of sessions."""
        names = [f"address {address or '?'}"] + ([f"key {key}"] if key is not None else [])
        parties = [(name, self._parties.get(name) or Party()) for name in names]
        if self.max_sessions is not None:
            for name, party in parties:
                if party.sessions >= self.max_sessions:
                    raise LimitExceeded(
                        f"{name} already has {party.sessions} sessions open, the limit "
                        f"(HARK_LIMIT_SESSIONS); close one first", retry_after=5.0)  # fmt: skip
        for name, party in parties:
            party.sessions += 1
            self._parties[name] = party
        return Lease(parties)

    def release(self, lease: Lease) -> None:
        if lease.released:
            return
        lease.released = True
        for name, party in lease.parties:
            party.sessions -= 1
            if party.sessions <= 0:  # its buckets go too: idle clients cost nothing
                self._parties.pop(name, None)

    def take(self, lease: Lease, size: int) -> None:
        """Count one frame of `size` bytes; LimitExceeded (nothing counted) if it is over
        a rate of its key's or its address's."""
        if self.chunks_per_s is None and self.bytes_per_s is None:
            return  # the hot path, where no rate is set
        now = time.monotonic()
        wanted: list[tuple[Bucket, float]] = []
        for name, party in lease.parties:
            if self.chunks_per_s is not None:
                party.chunks = party.chunks or Bucket(self.chunks_per_s, self.chunks_per_s, now)
            if self.bytes_per_s is not None:
                party.bytes = party.bytes or Bucket(self.bytes_per_s, self.bytes_per_s, now)
            for bucket, amount, unit in (
                (party.chunks, 1.0, "chunks"),
                (party.bytes, float(size), "bytes"),
            ):
                if bucket is None:
                    continue
                wait = bucket.wait(amount, now)
                if wait > 0:
                    raise LimitExceeded(
                        f"{name} sends more than {bucket.rate:g} {unit} a second (its limit); "
                        f"this frame was not stored: send it again in {wait:.2f} s",
                        wait,
                    )
                wanted.append((bucket, amount))
        for bucket, amount in wanted:
            bucket.tokens -= amount
