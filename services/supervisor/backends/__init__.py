"""Where children run: local OS processes (the default) or Docker containers."""

from __future__ import annotations

from typing import Protocol

from services.supervisor.child import ChildSpec


class SpawnError(OSError):
    """A child could not be started; the message says why (the supervisor makes it FATAL)."""


class Handle(Protocol):
    """A running incarnation of a child."""

    @property
    def pid(self) -> int | None: ...

    @property
    def instance(self) -> str:
        """This incarnation's token, which the actor puts in its heartbeats (HARK_INSTANCE)."""
        ...

    async def wait(self) -> int:
        """Until it exits; its return code (negative: killed by that signal)."""
        ...

    async def wait_ready(self) -> bool:
        """True once the child says it is up; False if it exits first."""
        ...

    def signal(self, signum: int) -> None: ...


class Backend(Protocol):
    """Starts children."""

    async def spawn(self, spec: ChildSpec) -> Handle: ...

    async def remove(self, name: str) -> None:
        """Child `name` is gone for good (scaled down, its last incarnation ended): free
        what the backend keeps of it."""
        ...

    async def close(self) -> None:
        """Release what the backend holds besides the children (spares, connections)."""
        ...
