"""Where children run. The process backend (local OS processes) is the default."""

from __future__ import annotations

from typing import Protocol

from services.supervisor.child import ChildSpec


class Handle(Protocol):
    """A running incarnation of a child."""

    @property
    def pid(self) -> int | None: ...

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

    async def close(self) -> None:
        """Release what the backend holds besides the children (spares, connections)."""
        ...
