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
import secrets
import signal
import sys

from services.supervisor.child import ChildSpec
from shared.actor import INSTANCE_ENV, NOTIFY_FD_ENV

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
# Loaded before any fork: the child may only call into it, not dlopen.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _child_setup() -> None:
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("could not start a spare", exc_info=task.exception())


class ProcessHandle:
    """A child process and the read end of its readiness pipe."""

    def __init__(
        self, proc: asyncio.subprocess.Process, ready_fd: int | None, instance: str
    ) -> None:
        self._proc = proc
        self._ready_fd = ready_fd
        self.instance = instance

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
    """Spawns children as local processes.

    For a spec with `spare_argv`, it keeps one warm spare of that role: a process
    that has done its imports (most of a Python actor's start-up) and waits for its
    name on stdin. A restart hands the name to the spare, so the replacement is up
    in tens of milliseconds, and a new spare starts in the background.
    """

    def __init__(self) -> None:
        self._spares: dict[str, tuple[ProcessHandle, asyncio.subprocess.Process]] = {}
        self._warming: dict[str, asyncio.Task[None]] = {}

    async def spawn(self, spec: ChildSpec) -> ProcessHandle:
        spare = self._spares.pop(spec.role, None)
        if spec.spare_argv is not None:
            self._warm(spec)  # the next one, for the restart after this
        if spare is not None:
            handle, proc = spare
            if proc.returncode is None and proc.stdin is not None:
                try:
                    proc.stdin.write(f"{spec.name}\n".encode())
                    await proc.stdin.drain()
                    proc.stdin.close()
                    return handle
                except (ConnectionError, OSError):
                    log.warning("spare %s died before it was used", proc.pid)
            handle.signal(signal.SIGKILL)
        if spec.stdin is None:
            return await self._start(spec.argv, spec)
        handle = await self._start(spec.argv, spec, stdin=asyncio.subprocess.PIPE)
        stdin = handle._proc.stdin
        assert stdin is not None
        try:
            stdin.write(spec.stdin)
            await stdin.drain()
            stdin.close()
        except (ConnectionError, OSError):
            log.warning("%s exited before it read its stdin", spec.name)  # its wait says why
        return handle

    def _warm(self, spec: ChildSpec) -> None:
        if spec.role in self._spares or spec.role in self._warming:
            return

        async def warm() -> None:
            assert spec.spare_argv is not None
            try:
                handle = await self._start(spec.spare_argv, spec, stdin=asyncio.subprocess.PIPE)
            finally:
                del self._warming[spec.role]
            self._spares[spec.role] = (handle, handle._proc)

        task = asyncio.create_task(warm(), name=f"spare-{spec.role}")
        self._warming[spec.role] = task
        task.add_done_callback(_log_failure)

    async def remove(self, name: str) -> None:
        """Nothing is kept of an ended process."""

    async def close(self) -> None:
        """Stop the spares (they were never actors, so nobody else waits for them)."""
        for task in list(self._warming.values()):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for handle, proc in self._spares.values():
            handle.signal(signal.SIGKILL)
            await proc.wait()
        self._spares.clear()

    async def _start(
        self, argv: tuple[str, ...], spec: ChildSpec, stdin: int = asyncio.subprocess.DEVNULL
    ) -> ProcessHandle:
        instance = secrets.token_hex(8)
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1", INSTANCE_ENV: instance}
        read_fd: int | None = None
        pass_fds: tuple[int, ...] = ()
        if spec.notify:
            read_fd, write_fd = os.pipe()
            os.set_inheritable(write_fd, True)
            env[NOTIFY_FD_ENV] = str(write_fd)
            pass_fds = (write_fd,)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, env=env, pass_fds=pass_fds, start_new_session=True,
                preexec_fn=_child_setup, stdin=stdin,
            )  # fmt: skip
        except BaseException:
            if read_fd is not None:
                os.close(read_fd)
            raise
        finally:
            for fd in pass_fds:
                os.close(fd)  # the child has its copy; EOF on the read end means it is gone
        return ProcessHandle(proc, read_fd, instance)
