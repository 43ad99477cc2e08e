"""The process backend: each child is a local OS process.

A child is started in a session of its own, so a Ctrl-C in the terminal reaches
only the supervisor, which then stops the children in order. Each child also gets
PR_SET_PDEATHSIG, so it is told to stop even if the supervisor is SIGKILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys

from services.supervisor.child import ChildSpec
from shared.actor import NOTIFY_FD_ENV

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Loaded before any fork: the child may only call into it, not dlopen.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _child_setup() -> None:
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ProcessHandle:
    """A child process and the read end of its readiness pipe."""

    def __init__(self, proc: asyncio.subprocess.Process, ready_fd: int | None) -> None:
        self._proc = proc
        self._ready_fd = ready_fd

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    async def wait(self) -> int:
        return await self._proc.wait()

    async def wait_ready(self) -> bool:
        if self._ready_fd is None:
            return self._proc.returncode is None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        pipe = os.fdopen(self._ready_fd, "rb", buffering=0)
        self._ready_fd = None
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        try:
            line = await reader.readline()  # b"" when the child exits without a word
        finally:
            transport.close()
        return line.strip() == b"READY"

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signum)


class ProcessBackend:
    """Spawns children as local processes."""

    async def spawn(self, spec: ChildSpec) -> ProcessHandle:
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}
        read_fd: int | None = None
        pass_fds: tuple[int, ...] = ()
        if spec.notify:
            read_fd, write_fd = os.pipe()
            os.set_inheritable(write_fd, True)
            env[NOTIFY_FD_ENV] = str(write_fd)
            pass_fds = (write_fd,)
        try:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv, env=env, pass_fds=pass_fds, start_new_session=True,
                preexec_fn=_child_setup,
            )  # fmt: skip
        except BaseException:
            if read_fd is not None:
                os.close(read_fd)
            raise
        finally:
            for fd in pass_fds:
                os.close(fd)  # the child has its copy; EOF on the read end means it is gone
        return ProcessHandle(proc, read_fd)
